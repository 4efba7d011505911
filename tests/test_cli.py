"""The `bert-embed` command line: unknown and conflicting options, errors on one line, nothing deleted before every
check passed, --help and --version without TensorFlow."""
import importlib.metadata
import json
import os
import pathlib
import re
import runpy
import subprocess
import sys

import pytest

from pipeline import arguments
from cli import main as cli
from snapshot import latest_pointer

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEQ = 32
# Lines TensorFlow's native code and Beam's start-up print on their own (not the command's doing).
_START_UP_NOISE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::InitializeLog|"
                             r"WARNING root: Resource module is not available)")


def _error_line(capsys) -> str:
  """The command's stderr, asserted to be a single error line."""
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("bert-embed run: error: ") and "Traceback" not in err, err
  return lines[0]


@pytest.fixture
def corpus(tmp_path) -> str:
  path = tmp_path / "in.txt"
  path.write_text("hello world\nthe cat sat on the mat\n", encoding="utf-8")
  return str(path)


@pytest.fixture
def existing_output(tmp_path):
  """An earlier run's files at PREFIX (content is irrelevant: only whether they survive); returns PREFIX and a
  function that asserts they are all still there, unchanged."""
  out = tmp_path / "out"
  out.mkdir()
  files = {out / "emb-manifest.json": '{"schema_version": 1}', out / "emb-00000-of-00001.parquet": "old vectors",
           out / "emb-errors-00000-of-00001.jsonl": "old dead letters\n"}
  for path, text in files.items():
    path.write_text(text, encoding="utf-8")

  def intact():
    assert {p: p.read_text(encoding="utf-8") if p.exists() else None for p in files} == files

  return str(out / "emb"), intact


def test_misspelt_options_are_refused_with_the_closest_spelling(corpus, tmp_path, capsys):
  code = cli.main(["run", "--normalise=false", "--poolng", "cls", "--seq_len", "16", "--input", corpus,
                   "--output", str(tmp_path / "emb"), "--model", str(tmp_path / "no-model")])
  line = _error_line(capsys)
  assert code == 2
  for wrong, right in (("--normalise", "--normalize"), ("--poolng", "--pooling"), ("--seq_len", "--seq_length")):
    assert f"{wrong} (did you mean {right}?)" in line
  assert not list(tmp_path.glob("emb*"))


def test_a_stray_word_is_refused(corpus, tmp_path, capsys):
  assert cli.main(["run", "--input", corpus, "cls", "--output", str(tmp_path / "emb"), "--model", "m"]) == 2
  assert "unexpected argument 'cls'" in _error_line(capsys)


def test_beam_and_dataflow_options_pass_and_layers_take_a_negative_list(tmp_path, capsys):
  missing = str(tmp_path / "missing-*.txt")
  code = cli.main(["run", "--input", missing, "--output", str(tmp_path / "emb"), "--model", "m", "--pooling", "cls",
                   "--layers", "-1,-2", "--runner", "DataflowRunner", "--project", "p", "--region", "r",
                   "--worker_machine_type", "n2-standard-4", "--experiments", "use_runner_v2",
                   "--experiments=no_use_multiple_sdk_containers", "--sdk_container_image", "img",
                   "--dataflow_service_options", "worker_accelerator=type:nvidia-l4;count:1",
                   "--direct_num_workers", "2", "--temp_location", "gs://b/tmp", "--save_main_session"])
  # Every option was accepted; then the local input is refused for the remote runner (before it is matched).
  assert code == 2 and f"--input {missing} is a path on this machine" in _error_line(capsys)
  argv = arguments.join_negative_values(["--layers", "-1,-2", "--input", "x"])
  assert argv == ["--layers=-1,-2", "--input", "x"]
  assert arguments.check(argv + ["--output", "o", "--model", "m", "--pooling", "mean"]).layers == "-1,-2"


RENDER_RUNNER = "apache_beam.runners.render.RenderRunner"  # declares its options in its own module


def test_options_a_runner_declares_in_its_own_module_are_accepted():
  argv = ["--input", "x", "--output", "o", "--model", "m", "--runner", RENDER_RUNNER, "--render_output", "g.dot",
          "--render_port=-1"]
  assert arguments.check(argv).model == "m"
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  assert PipelineOptions(argv).get_all_options()["render_output"] == ["g.dot"]  # Beam sees the option too


def test_a_misspelt_runner_option_is_refused_with_the_closest_spelling():
  argv = ["--input", "x", "--output", "o", "--model", "m", "--runner", RENDER_RUNNER, "--render_outptu", "g.dot"]
  with pytest.raises(arguments.UsageError, match=r"^unknown option --render_outptu \(did you mean --render_output\?\)"):
    arguments.check(argv)


def test_the_dask_runners_options_need_its_module(capsys):
  """Accepted where the Dask runner's module imports (dask installed); else one line saying why it cannot."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  runner = "apache_beam.runners.dask.dask_runner.DaskRunner"
  argv = ["--input", "x", "--output", "o", "--model", "m", "--runner", runner, "--dask_client_address", "h:8786"]
  if importlib.util.find_spec("dask") is not None:
    assert arguments.check(argv).model == "m"
    return
  assert cli.main(["run", *argv]) == 2
  assert _error_line(capsys).startswith(f"bert-embed run: error: --runner {runner}: cannot import "
                                        "apache_beam.runners.dask.dask_runner (ModuleNotFoundError: ")


def test_runner_modules_are_found_as_beam_finds_them():
  assert arguments.runner_module(None) == "apache_beam.runners.direct.direct_runner"
  assert arguments.runner_module("dataflow") == arguments.runner_module("DataflowRunner") == \
      "apache_beam.runners.dataflow.dataflow_runner"
  assert arguments.runner_module("PrismRunner") == "apache_beam.runners.portability.prism_runner"
  assert arguments.runner_module(RENDER_RUNNER) == "apache_beam.runners.render"
  assert arguments.runner_module("NoSuchRunner") is None


@pytest.mark.parametrize("extra,message", [
    (["--chunk-stride", "3"], "--chunk-stride need(s) --long-text chunk"),
    (["--chunk-output", "mean"], "--chunk-output need(s) --long-text chunk"),
    (["--text-pair-field", "b"], "--text-pair-field needs records with fields"),
    (["--mlm-per-token"], "--mlm-per-token need(s) --mlm-scores"),
    (["--pooling", "pooled", "--layers", "-1"], "--layers needs --pooling cls or mean"),
    (["--input-format", "jsonl", "--text-field", ""], "--text-field must name a field"),
    (["--pooling", "max"], "argument --pooling: invalid choice: 'max'"),
    (["--seq-length", "0"], "argument --seq-length/--seq_length: expected a positive integer"),
    (["--bucket-lengths", "8,x"], "--bucket-lengths: bucket lengths must be"),
    (["--min-batch-size", "8"], "--min-batch-size needs --bucket-lengths none"),
    (["--direct_num_workers=x"], "argument --direct_num_workers: invalid int value: 'x'"),
    (["--show-neighbours", "x"], "argument --show-neighbours: expected an integer"),
])
def test_bad_values_and_options_that_need_another_fail_on_one_line(corpus, tmp_path, capsys, extra, message):
  code = cli.main(["run", "--input", corpus, "--output", str(tmp_path / "emb"), "--model", str(tmp_path / "nope"),
                   *extra])
  assert code == 2 and message in _error_line(capsys)


@pytest.mark.parametrize("extra,message", [
    (["--input-format", "jsonl", "--text-field", ""], "--text-field must name a field"),
    (["--poolng", "cls"], "--poolng (did you mean --pooling?)"),
    (["--chunk-stride", "3"], "--chunk-stride need(s) --long-text chunk"),
    (["--seq-length", "100"], "--seq-length 100 exceeds the encoder's 64 positions"),
    (["--mlm-scores", "--long-text", "chunk"], "--mlm-scores is not supported with --long-text chunk"),
])
def test_an_existing_output_survives_a_run_that_fails_its_checks(
    corpus, tiny_model_dir, existing_output, capsys, extra, message):
  prefix, intact = existing_output
  seq = [] if "--seq-length" in extra else ["--seq-length", str(SEQ)]
  code = cli.main(["run", "--model", tiny_model_dir, "--input", corpus, "--output", prefix, *seq, *extra])
  assert code == 2 and message in _error_line(capsys)
  intact()


def test_an_existing_output_survives_a_model_that_does_not_load(corpus, tmp_path, existing_output, capsys):
  prefix, intact = existing_output
  broken = tmp_path / "broken"
  for part in ("preprocessor", "encoder"):
    (broken / part).mkdir(parents=True)
    (broken / part / "saved_model.pb").write_bytes(b"not a SavedModel")
  code = cli.main(["run", "--model", str(broken), "--input", corpus, "--output", prefix])
  assert code == 2 and "cannot load the preprocessor" in _error_line(capsys)
  intact()


@pytest.mark.parametrize("output,message", [
    ("out/e*b", "must not contain glob characters"),
    ("afile/sub/emb", "is a file, so the directory"),
    ("/sys/bert-embed-test/emb", "cannot write in /sys"),  # sysfs refuses new files, even to root
])
def test_unwritable_outputs_fail_before_the_job(corpus, tiny_model_dir, tmp_path, capsys, output, message):
  (tmp_path / "afile").write_text("a regular file", encoding="utf-8")
  (tmp_path / "out").mkdir()
  target = output if output.startswith("/") else str(tmp_path / output)
  code = cli.main(["run", "--model", tiny_model_dir, "--input", corpus, "--output", target, "--seq-length", str(SEQ)])
  assert code == 2 and message in _error_line(capsys)
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_an_alias_of_the_previous_output_is_the_previous_output(corpus, tiny_model_dir, tmp_path, capsys):
  run1 = tmp_path / "run1"
  run1.mkdir()
  manifest = {"schema_version": 1, "model": {"fingerprint": "0" * 64}, "dimension": 32,
              "options": {"format": "parquet"}, "output_files": [str(run1 / "emb-00000-of-00001.parquet")]}
  (run1 / "emb-manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
  (run1 / "emb-00000-of-00001.parquet").write_text("old vectors", encoding="utf-8")
  os.symlink(run1, tmp_path / "alias")
  before = sorted(p.name for p in run1.iterdir())
  for previous, output in ((run1 / "emb", tmp_path / "alias" / "emb"), (tmp_path / "alias" / "emb", run1 / "emb")):
    code = cli.main(["run", "--model", tiny_model_dir, "--input", corpus, "--output", str(output),
                     "--previous", str(previous), "--seq-length", str(SEQ)])
    assert code == 2 and "is the previous output" in _error_line(capsys)
    assert sorted(p.name for p in run1.iterdir()) == before


def test_remote_prefixes_are_compared_by_bucket_and_object():
  assert latest_pointer.same_prefix("gs://b/runs//r1/emb", "gs://b/runs/r1/emb")
  assert not latest_pointer.same_prefix("gs://b/runs/r1/emb", "gs://c/runs/r1/emb")
  assert not latest_pointer.same_prefix("gs://b/runs/r1/emb", "gs://b/runs/r1/emb2")


def test_both_entry_points_report_errors_the_same_way(corpus, tmp_path, capsys, monkeypatch):
  """The Flex Template's templates/main.py and `bert-embed run`."""
  argv = ["--input", corpus, "--output", str(tmp_path / "emb"), "--model", "m", "--text-field", ""]
  monkeypatch.setattr(sys, "argv", [str(ROOT / "templates" / "main.py"), *argv])
  monkeypatch.setattr(cli, "finish", sys.exit)
  with pytest.raises(SystemExit) as exited:
    runpy.run_path(str(ROOT / "templates" / "main.py"), run_name="__main__")
  assert exited.value.code == 2
  from_run = capsys.readouterr()
  assert cli.main(["run", *argv]) == 2
  assert capsys.readouterr() == from_run and from_run.err.startswith("bert-embed run: error: --text-field")


def test_help_shows_every_options_default(capsys):
  assert cli.main(["run", "--help"]) == 0
  out = capsys.readouterr().out
  blocks = re.split(r"\n(?=  -)", out.split("\nbert-embed:", 1)[1])
  options = [b for b in blocks if b.lstrip().startswith("--") and not b.lstrip().startswith("--version")]
  assert len(options) > 30
  for block in options:
    assert re.search(r"default\s*:", " ".join(block.split()), re.IGNORECASE), block
  assert "(default: 128)" in " ".join(out.split()) and "Beam and Dataflow pipeline options" in out


def test_version_prints_the_package_and_the_pinned_stack(capsys):
  for argv in (["--version"], ["run", "--version"]):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"bert-embed {importlib.metadata.version('bert-embed')} (")
    for name in ("apache-beam", "tensorflow", "tensorflow-text", "tfx-bsl", "pyarrow"):
      assert f"{name} {importlib.metadata.version(name)}" in out


def test_mlm_advice_gives_a_working_export_command():
  from runtime import mlm_scoring  # pylint: disable=import-outside-toplevel
  message = mlm_scoring._missing_message("E", "has no .mlm")  # pylint: disable=protected-access
  command = re.search(r"`(bert-embed export [^`]*)`", message).group(1)
  args = cli.export_parser().parse_args(command.split()[2:])
  assert args.source.startswith("hf:") and args.output


def test_help_version_and_option_errors_do_not_import_tensorflow(corpus, tiny_model_dir, tmp_path):
  """In a fresh process: TensorFlow takes seconds to import and is not needed to answer these."""
  calls = [["--version"], ["run", "--version"], ["run", "--help"], ["run", "--bogus"], ["run", "--pooling", "max"],
           ["run", "--model", tiny_model_dir, "--input", corpus, "--output", str(tmp_path / "emb"),
            "--chunk-stride", "3"]]
  script = ("import json, sys; from cli import main as cli; "
            f"codes = [cli.main(argv) for argv in {calls!r}]; "
            "print(json.dumps([codes, 'tensorflow' in sys.modules]))")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        check=False)
  codes, tensorflow = json.loads(proc.stdout.strip().splitlines()[-1])
  assert codes == [0, 0, 0, 2, 2, 2] and tensorflow is False, proc.stderr


def test_duplicate_id_failure_is_one_line_on_stderr(tiny_model_dir, tmp_path):
  src = tmp_path / "in.jsonl"
  src.write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": "world"}\n{"id": "a", "text": "the cat"}\n',
                 encoding="utf-8")
  proc = subprocess.run(
      [sys.executable, "-m", "cli", "run", "--model", tiny_model_dir, "--input", str(src), "--input-format",
       "jsonl", "--output", str(tmp_path / "emb"), "--seq-length", str(SEQ), "--on-duplicate-id", "fail"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  lines = [line for line in proc.stderr.splitlines() if line.strip() and not _START_UP_NOISE.match(line)]
  assert proc.returncode == 1 and lines == [
      f"bert-embed run: error: duplicate id 'a': records at {src}:1 and {src}:3 (--on-duplicate-id fail)"], proc.stderr


def test_every_flex_template_parameter_is_an_option():
  parameters = [p["name"] for p in json.loads((ROOT / "templates" / "metadata.json").read_text())["parameters"]]
  known = set(arguments.check_with_beam(["--runner", "DataflowRunner"]))
  assert parameters and [p for p in parameters if f"--{p}" not in known] == []
