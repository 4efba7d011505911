"""Dataflow. Every byte a job touches goes through Beam's FileSystems, so gs:// works end to end
against the suite's GCS emulator (the `gcs` fixture); remote launches refuse launcher-local paths and stage
launcher-side models once; the Dataflow job graph builds offline (dry run); the launch never deletes an earlier
output (the job replaces it in its last step, once its checks passed).
"""
import gzip
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions, WorkerOptions
from apache_beam.portability.api import beam_runner_api_pb2

from cli import main as cli
from models import default_model
from snapshot import manifest as manifest_lib
from models import remote
from pipeline.run import run

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORDS = ("the cat dog bird fish sat run walk jump play on mat hat house tree car hello world good bad big small red "
         "blue green quick brown fox lazy over under").split()
COMMON = ["--input-format", "jsonl", "--seq-length", "32", "--pooling", "mean", "--quiet"]
# Beam validates the project id's spelling ("p" is refused) and the --temp_location bucket's name (see the
# gcs_valid_bucket fixture); nothing reaches a network.
DRY_RUN = ["--runner", "DataflowRunner", "--dry_run=True", "--no_auth", "--sdk_location=container",
           "--project", "test-project", "--region", "r"]


def _read(path: str) -> bytes:
  with FileSystems.open(path, compression_type="uncompressed") as f:
    return f.read()


def _write(path: str, data: bytes) -> None:
  with FileSystems.create(path, compression_type="uncompressed") as f:
    f.write(data)


def _corpus(n: int, edits: dict | None = None, drop=(), add=()) -> list[dict]:
  rng = np.random.default_rng(3)
  records = {f"r{i:03d}": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for i in range(n)}
  records.update(edits or {})
  for key in drop:
    del records[key]
  records.update(dict(add))
  return [{"id": k, "text": v} for k, v in sorted(records.items())]


def _jsonl_gz(records: list[dict]) -> bytes:
  return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))


def _put_corpus(directory: str, records: list[dict], local_dir: pathlib.Path) -> None:
  """Two .jsonl.gz shards under `directory` (gs://), and the same files under `local_dir`."""
  local_dir.mkdir(parents=True)
  for k in range(2):
    data = _jsonl_gz(records[k::2])
    _write(f"{directory}/part-{k}.jsonl.gz", data)
    (local_dir / f"part-{k}.jsonl.gz").write_bytes(data)


def _vectors(manifest: dict) -> dict:
  """{id: vector} of an output (local or gs://), read through FileSystems."""
  out = {}
  for path in manifest["output_files"]:
    table = pq.read_table(io.BytesIO(_read(path)))
    for rid, vec in zip(table.column("id").to_pylist(), table.column("embedding").to_pylist()):
      out[rid] = np.asarray(vec, np.float32)
  return out


def _assert_close(got: dict, want: dict) -> None:
  assert sorted(got) == sorted(want)
  for rid, vec in want.items():
    np.testing.assert_allclose(got[rid], vec, atol=1e-5, err_msg=rid)


# --------------------------------------------------------------------------------------------
# A gs:// job end to end.


def test_a_gs_job_on_two_worker_processes_then_an_incremental_rerun_equal_local_runs(
    gcs, gcs_tiny_model, tiny_model_dir, tmp_path, monkeypatch):
  model = ["--preprocessor", f"{gcs_tiny_model}/preprocessor", "--encoder", f"{gcs_tiny_model}/encoder"]
  first = _corpus(30)
  second = _corpus(30, edits={"r004": "a changed text about the red fox"}, drop=["r007"],
                   add=[("r100", "hello new world"), ("r101", "the lazy green bird")])
  _put_corpus(f"{gcs}/e2e/corpus1", first, tmp_path / "corpus1")
  _put_corpus(f"{gcs}/e2e/corpus2", second, tmp_path / "corpus2")
  root = f"{gcs}/e2e/emb"

  # Run 1: gs:// in, gs:// models, gs:// out, on 2 worker processes. The launcher localised the model when it
  # inspected it; with their own TMPDIR both workers localise it again, at once.
  monkeypatch.setenv("TMPDIR", str(tmp_path / "workers-tmp"))
  (tmp_path / "workers-tmp").mkdir()
  argv = ["--input", f"{gcs}/e2e/corpus1/*.jsonl.gz", "--output", f"{root}/run1/emb", "--previous", f"latest:{root}",
          *model, *COMMON, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
  one = run(argv).manifest
  assert one["counts"]["read"] == one["counts"]["written"] == one["counts"]["encoded"] == 30
  assert one["model"]["encoder"] == f"{gcs_tiny_model}/encoder"
  assert one["incremental"]["mode"] == "full" and one["incremental"]["latest_pointer"] == f"{root}/LATEST"
  assert all(f.startswith(f"{root}/run1/emb-") for f in one["files"])
  localised = os.listdir(tmp_path / "workers-tmp" / "bert-embed-models")
  assert len(localised) == 2 and not [d for d in localised if ".partial-" in d]  # preprocessor, encoder
  monkeypatch.delenv("TMPDIR")

  # Run 2, in-process: follows LATEST, encodes only the new and the changed records.
  argv = ["--input", f"{gcs}/e2e/corpus2/*.jsonl.gz", "--output", f"{root}/run2/emb", "--previous", f"latest:{root}",
          *model, *COMMON]
  two = run(argv).manifest
  counts = {k: two["counts"][k] for k in ("new", "changed", "unchanged", "deleted", "encoded", "written")}
  assert counts == {"new": 2, "changed": 1, "unchanged": 28, "deleted": 1, "encoded": 3, "written": 31}
  assert two["incremental"]["mode"] == "incremental"
  assert two["incremental"]["previous"] == f"{root}/run1/emb"

  # Read back from the emulator: the manifests and the pointer.
  assert manifest_lib.read_manifest(f"{root}/run1/emb") == one
  assert manifest_lib.read_manifest(f"{root}/run2/emb") == two
  assert _read(f"{root}/LATEST").decode() == f"{root}/run2/emb\n"

  # The same jobs on local files with the local model.
  local = []
  for k in (1, 2):
    argv = ["--input", str(tmp_path / f"corpus{k}" / "*.jsonl.gz"), "--output", str(tmp_path / f"local{k}" / "emb"),
            "--model", tiny_model_dir, *COMMON]
    local.append(run(argv).manifest)
  _assert_close(_vectors(one), _vectors(local[0]))
  _assert_close(_vectors(two), _vectors(local[1]))


def test_localize_copies_a_remote_model_once_when_two_processes_race(gcs, gcs_tiny_model, tiny_model_dir, tmp_path):
  """Both processes wait at a barrier, then localise the same gs:// SavedModel into the same (empty) cache."""
  code = (
      "import os, sys, time\n"
      "open(sys.argv[1] + '.ready', 'w').close()\n"
      "while not all(os.path.exists(f'{sys.argv[2]}/{k}.ready') for k in (0, 1)):\n"
      "  time.sleep(0.01)\n"
      "from runtime.saved_models import localize\n"
      "print(localize(sys.argv[3]))\n")
  barrier = tmp_path / "barrier"
  barrier.mkdir()
  env = {**os.environ, "TMPDIR": str(tmp_path / "cache")}
  (tmp_path / "cache").mkdir()
  # Imported before the barrier, so that both copy at the same moment (Beam's import takes seconds).
  code = "import apache_beam.io.gcp.gcsfilesystem\n" + code
  procs = [subprocess.Popen([sys.executable, "-c", code, str(barrier / str(k)), str(barrier),
                             f"{gcs_tiny_model}/encoder"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for k in (0, 1)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  (dest,) = {out.strip() for out, _ in outs}
  assert dest.startswith(str(tmp_path / "cache"))
  source = pathlib.Path(tiny_model_dir) / "encoder"
  want = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
  assert sorted(str(p.relative_to(dest)) for p in pathlib.Path(dest).rglob("*") if p.is_file()) == want
  for rel in want:
    assert (pathlib.Path(dest) / rel).read_bytes() == (source / rel).read_bytes(), rel
  assert os.listdir(pathlib.Path(dest).parent) == [os.path.basename(dest)]  # no staging directory left


# --------------------------------------------------------------------------------------------
# Remote launches.


@pytest.mark.parametrize("flag, value", [
    ("--input", "corpus/*.txt"), ("--output", "out/emb"), ("--model", "models/mybert"),
    ("--previous", "latest:/data/emb"), ("--encoder", "file:///models/enc")])
def test_a_dataflow_launch_with_a_local_path_exits_2_with_one_line(flag, value, capsys):
  args = {"--input": "gs://b/corpus/*.txt", "--output": "gs://b/emb/run/emb", "--model": "gs://b/models/mybert"}
  if flag == "--encoder":
    del args["--model"]
    args["--preprocessor"] = "gs://b/models/mybert/preprocessor"
  args[flag] = value
  argv = ["run", *[x for kv in args.items() for x in kv], "--runner", "DataflowRunner", "--project", "p",
          "--region", "r", "--temp_location", "gs://b/tmp"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"{flag} {value} is a path on this machine" in err, err
  assert "DataflowRunner workers cannot read" in err


def test_local_runners_accept_local_paths_and_remote_ones_do_not():
  from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.portability.prism_runner import PrismRunner  # pylint: disable=import-outside-toplevel
  for runner in (None, "DirectRunner", "direct", "SwitchingDirectRunner", "BundleBasedDirectRunner", "PrismRunner",
                 "apache_beam.runners.direct.direct_runner.DirectRunner", "FnApiRunner", PrismRunner(), FnApiRunner()):
    assert not remote.is_remote_runner(runner), runner
  for runner in ("DataflowRunner", "dataflow", "TestDataflowRunner", "FlinkRunner", "PortableRunner"):
    assert remote.is_remote_runner(runner), runner


def _put_old_output(prefix: str) -> list[str]:
  """A completed earlier output under `prefix`: its manifest and one shard."""
  shard = f"{prefix}-00000-of-00001.parquet"
  _write(shard, b"an earlier run's shard")
  _write(manifest_lib.manifest_path(prefix), json.dumps({"schema_version": 1, "output_files": [shard]}).encode())
  return [shard, manifest_lib.manifest_path(prefix)]


def _template_parameters() -> set:
  return {p["name"] for p in json.loads((ROOT / "templates" / "metadata.json").read_text())["parameters"]}


def test_the_dataflow_job_builds_offline_from_template_parameters_and_the_launch_deletes_nothing(
    gcs, gcs_valid_bucket, gcs_tiny_model):
  corpus = f"{gcs}/dry/corpus/part-0.jsonl.gz"
  _write(corpus, _jsonl_gz(_corpus(4)))
  prefix = f"{gcs}/dry/emb/run2/emb"
  old = _put_old_output(prefix)
  # The Flex Template passes its parameters (metadata.json's names) as --name=value.
  params = {"input": f"{gcs}/dry/corpus/*.jsonl.gz", "input_format": "jsonl", "output": prefix,
            "model": gcs_tiny_model, "previous": f"latest:{gcs}/dry/emb", "seq_length": "32", "keep_text": "true",
            "format": "parquet", "num_shards": "2"}
  assert set(params) <= _template_parameters()
  gpu = ["--sdk_container_image", "europe-west4-docker.pkg.dev/p/bert-embed/bert-embed-gpu:latest",  # README's
         "--experiments=use_runner_v2", "--experiments=no_use_multiple_sdk_containers",  # GPU command
         "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver",
         "--machine_type", "n1-standard-8", "--disk_size_gb", "100", "--precision=fp16"]
  outcome = run([f"--{k}={v}" for k, v in params.items()] + DRY_RUN + gpu
                + ["--temp_location", f"{gcs_valid_bucket}/tmp", "--quiet"])
  job = outcome.result.job
  assert job.proto.name and job.proto.type_.name == "JOB_TYPE_BATCH"
  assert job.options.view_as(GoogleCloudOptions).temp_location.startswith(f"{gcs_valid_bucket}/tmp/")
  assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(job.options.view_as(DebugOptions).experiments)
  assert job.options.view_as(WorkerOptions).machine_type == "n1-standard-8"
  assert job.options.view_as(GoogleCloudOptions).dataflow_service_options == [
      "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
  images = [beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
            for env in job.proto_pipeline.components.environments.values()]
  assert images and set(images) == {"europe-west4-docker.pkg.dev/p/bert-embed/bert-embed-gpu:latest"}
  labels = {t.unique_name for t in outcome.result.job.proto_pipeline.components.transforms.values()}
  for label in ("RemoveStaleStaging", "AfterCleanUp", "WriteEmbeddings", "WriteDeadLetters", "Finalize",
                "UpdateLatest", "ReadTexts", "EmbedTexts"):
    assert label in labels, label
  assert all(FileSystems.exists(path) for path in old)  # replacing them is the job's last step, not the launch's


def test_a_default_model_is_staged_once_under_temp_location_and_reused(gcs, gcs_valid_bucket, tiny_model_dir,
                                                                       monkeypatch):
  monkeypatch.setattr(default_model, "ensure_default_model", lambda: tiny_model_dir)
  uploads = []
  real_upload = remote._upload_tree  # pylint: disable=protected-access
  monkeypatch.setattr(remote, "_upload_tree", lambda src, dst: uploads.append(dst) or real_upload(src, dst))
  _write(f"{gcs}/stage/corpus.jsonl", b'{"id": "a", "text": "hello world"}\n')
  argv = ["--input", f"{gcs}/stage/corpus.jsonl", "--output", f"{gcs}/stage/emb", "--model", "default", *COMMON,
          *DRY_RUN, "--temp_location", f"{gcs_valid_bucket}/stage-tmp"]
  first = run(argv).config
  staged = f"{gcs_valid_bucket}/stage-tmp/bert-embed-models/{first.model_info.fingerprint}"
  assert first.model.preprocessor == f"{staged}/preprocessor" and first.model.encoder == f"{staged}/encoder"
  assert uploads == [first.model.preprocessor, first.model.encoder]
  assert FileSystems.exists(f"{staged}/{remote.STAGED_MARKER}")
  assert FileSystems.exists(f"{staged}/encoder/saved_model.pb")
  assert FileSystems.exists(f"{staged}/preprocessor/assets/vocab.txt")
  second = run(argv).config
  assert second.model == first.model and len(uploads) == 2  # reused, not uploaded again
  from models import model_inspection  # pylint: disable=import-outside-toplevel
  described = model_inspection.describe(second.model, second.model_info)  # the manifest's model section
  assert described["encoder"] == f"{staged}/encoder" and described["staged_from"] == "default"


@pytest.mark.parametrize("temp_location", [None, "/tmp/local"])
def test_staging_needs_a_remote_temp_location(temp_location, capsys):
  argv = ["run", "--input", "gs://b/x/*.jsonl", "--output", "gs://b/x/emb", "--model", "default",
          "--runner", "DataflowRunner", "--project", "p", "--region", "r"]
  if temp_location:
    argv += ["--temp_location", temp_location]
  assert cli.main(argv) == 2  # refused before the inputs are matched or the model is exported
  err = capsys.readouterr().err
  assert "--model default is staged under --temp_location" in err and err.count("\n") == 1, err
