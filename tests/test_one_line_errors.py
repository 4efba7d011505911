"""Errors the README promises as one line: a full disk, an unreadable or misplaced LATEST, `bert-embed export` into
a non-empty folder or with an out-of-range --seq-length, inputs that are the run's own files, a flag given twice."""
import codecs
import contextlib
import errno
import json
import logging
import os
import subprocess

import pytest
from apache_beam.io.filesystems import FileSystems

from cli import main as cli
from snapshot import latest_pointer
from formats.usage import UsageError

SEQ = 32
_WORDS = "the quick brown fox sat on a mat with a lazy dog".split()


def _one_line(capsys, command: str = "run") -> str:
  """The command's stderr, asserted to be a single error line without a traceback."""
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"bert-embed {command}: error: ") and "Traceback" not in err, err
  return lines[0]


def _no_logged_tracebacks(caplog) -> None:
  """Beam logs a step's exception with its traceback before re-raising it: the command keeps that quiet."""
  logged = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
  assert not logged, [r.getMessage() for r in logged]


def _corpus(path, lines: int) -> str:
  path.write_text("".join(" ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(6)) + f" {i}\n"
                          for i in range(lines)), encoding="utf-8")
  return str(path)


# --- a full disk ---------------------------------------------------------------------------------
# A small tmpfs is a real full disk (root can mount one); elsewhere, files created under the directory fail as a
# full disk does (created, then ENOSPC).

def _mount_tmpfs(path, size: str) -> bool:
  try:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          check=False, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return False
  return done.returncode == 0


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
  """Returns make(directory, size, roomy=None): `directory` becomes a disk of `size` (e.g. "8k") that is full once
  that much is written, or filled at once with fill=True; `roomy`, a subdirectory, stays writable."""
  mounted, patched = [], {}

  def make(directory, size: str, fill: bool = False, roomy=None):
    directory.mkdir(parents=True, exist_ok=True)
    if roomy is not None:
      roomy_dir = directory / roomy
    if _mount_tmpfs(directory, size):
      mounted.append(directory)
      if roomy is not None:
        roomy_dir.mkdir()
      if fill:
        with contextlib.suppress(OSError), open(directory / "filler", "wb") as f:
          for _ in range(1 << 12):
            f.write(b"\0" * 4096)
            f.flush()
      if roomy is not None:
        assert _mount_tmpfs(roomy_dir, "16m")
        mounted.append(roomy_dir)
      return
    if roomy is not None:
      roomy_dir.mkdir()
    patched[str(directory)] = None if roomy is None else str(roomy_dir)
    if len(patched) == 1:
      real_create = FileSystems.create

      def create(path, *args, **kwargs):
        f = real_create(path, *args, **kwargs)
        for full, spared in patched.items():
          inside = os.path.abspath(path).startswith(full + os.sep)
          if inside and not (spared and os.path.abspath(path).startswith(spared + os.sep)):
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return f

      monkeypatch.setattr(FileSystems, "create", staticmethod(create))

  yield make
  for directory in reversed(mounted):
    subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False, timeout=30)


def test_a_full_disk_under_the_output_is_one_line(tiny_model_dir, tmp_path, full_disk, capsys, caplog):
  full_disk(tmp_path / "disk", "8k")
  corpus = _corpus(tmp_path / "in.txt", 300)  # 300 vectors of 32 floats: more than 8 KiB
  output = str(tmp_path / "disk" / "emb")
  code = cli.main(["run", "--model", tiny_model_dir, "--input", corpus, "--output", output, "--seq-length", str(SEQ),
                   "--quiet"])
  line = _one_line(capsys)
  assert code == 1, line
  assert line.startswith(f"bert-embed run: error: no space left on device writing {output} in step Write"), line
  assert line.endswith("; free some space (or write elsewhere) and run again"), line
  _no_logged_tracebacks(caplog)
  assert not os.path.exists(output + "-manifest.json")


def test_a_full_disk_at_the_pointer_is_one_line_and_leaves_no_temporary_pointer(
    tiny_model_dir, tmp_path, full_disk, capsys, caplog):
  root = tmp_path / "root"
  full_disk(root, "4k", fill=True, roomy="run1")  # ROOT is full; its run folder is not
  corpus = _corpus(tmp_path / "in.txt", 5)
  code = cli.main(["run", "--model", tiny_model_dir, "--input", corpus, "--output", str(root / "run1" / "emb"),
                   "--previous", f"latest:{root}", "--seq-length", str(SEQ), "--quiet"])
  line = _one_line(capsys)
  assert code == 1 and line.startswith(
      f"bert-embed run: error: no space left on device writing {root / 'run1' / 'emb'} in step UpdateLatest"), line
  _no_logged_tracebacks(caplog)
  assert not [name for name in os.listdir(root) if name.startswith("LATEST")], os.listdir(root)
  assert os.path.exists(root / "run1" / "emb-manifest.json")  # the job itself finished


def test_out_of_space_is_found_through_beams_rewrapping():
  try:
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
      raise RuntimeError(f"{e} [while running 'WriteManifest/Write']") from None
  except RuntimeError as wrapped:
    assert cli.out_of_space(wrapped)  # `from None` hides the context: the text still tells
  assert not cli.out_of_space(RuntimeError("OSError: [Errno 13] Permission denied"))
  assert not cli.out_of_space(ValueError("no space in this text"))


# --- LATEST ----------------------------------------------------------------------------------------

def _previous_output(directory) -> str:
  """A completed output's manifest (the files need not exist for the launcher); returns its prefix."""
  directory.mkdir(parents=True)
  prefix = directory / "emb"
  (directory / "emb-manifest.json").write_text(json.dumps(
      {"schema_version": 1, "options": {"format": "parquet"}, "output_files": ["emb-00000-of-00001.parquet"]}),
      encoding="utf-8")
  return str(prefix)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_a_latest_written_by_a_windows_editor_is_read(tmp_path, encoding):
  root = tmp_path / "root"
  prefix = _previous_output(root / "run-1")
  data = (prefix + "\r\n").encode(encoding)
  if encoding == "utf-16-be":
    data = codecs.BOM_UTF16_BE + data
  (root / "LATEST").write_bytes(data)
  found = latest_pointer.resolve_previous(f"latest:{root}", str(tmp_path / "root" / "run-2" / "emb"))
  assert found.prefix == prefix and found.manifest["output_files"] == ["emb-00000-of-00001.parquet"]


def test_a_relative_prefix_in_latest_is_under_root_not_the_working_directory(tmp_path, monkeypatch):
  root = tmp_path / "root"
  prefix = _previous_output(root / "run-1")
  (root / "LATEST").write_text("run-1/emb\n", encoding="utf-8")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  found = latest_pointer.resolve_previous(f"latest:{root}", str(root / "run-2" / "emb"))
  assert latest_pointer.same_prefix(found.prefix, prefix) and found.manifest is not None


def test_a_latest_that_is_not_text_is_one_line(tmp_path, capsys):
  root = tmp_path / "root"
  root.mkdir()
  (root / "LATEST").write_bytes(b"\xff\xfe\xfd run-1/emb\n"[2:] + b"\x80")
  corpus = _corpus(tmp_path / "in.txt", 2)
  code = cli.main(["run", "--model", "m", "--input", corpus, "--output", str(root / "run-2" / "emb"),
                   "--previous", f"latest:{root}"])
  assert code == 2 and _one_line(capsys) == (
      f"bert-embed run: error: {root}/LATEST is not UTF-8 text (invalid start byte at byte 0): it should hold the "
      "output prefix of the last successful run on one line")


@pytest.mark.parametrize("previous", [False, True])
def test_a_directory_named_latest_is_refused_at_launch(tmp_path, capsys, previous):
  root = tmp_path / "root"
  (root / "LATEST").mkdir(parents=True)
  corpus = _corpus(tmp_path / "in.txt", 2)
  # With latest:ROOT the pointer is ROOT/LATEST; without, LATEST beside the output.
  extra, output = (["--previous", f"latest:{root}"], root / "run-1" / "emb") if previous else ([], root / "emb")
  code = cli.main(["run", "--model", "no-such-model", "--input", corpus, "--output", str(output), *extra])
  assert code == 2 and _one_line(capsys) == (
      f"bert-embed run: error: {root}/LATEST is a directory, but the run keeps its LATEST pointer file there: "
      "rename or remove that directory")


class _FullDiskFile:
  """A file just created on a full disk: its bytes cannot be written."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()


def test_a_pointer_write_that_fails_removes_its_temporary_file(tmp_path, monkeypatch):
  real_create = FileSystems.create
  monkeypatch.setattr(FileSystems, "create", staticmethod(lambda path, *a, **k: _FullDiskFile(real_create(path, *a,
                                                                                                         **k))))
  with pytest.raises(OSError, match="No space left"):
    latest_pointer.write_pointer(str(tmp_path / "LATEST"), str(tmp_path / "emb"))
  assert not os.listdir(tmp_path)


# --- bert-embed export -------------------------------------------------------------------------------

def test_export_into_a_non_empty_folder_says_to_pass_overwrite(tiny_config_file, tiny_vocab_file, tmp_path, capsys):
  out = tmp_path / "model"
  out.mkdir()
  (out / "notes.txt").write_text("keep me", encoding="utf-8")
  argv = ["export", "--from", f"random:{tiny_config_file}", "--vocab", tiny_vocab_file, "--output", str(out),
          "--seq-length", str(SEQ)]
  assert cli.main(argv) == 2 and _one_line(capsys, "export") == (
      f"bert-embed export: error: --output {out} exists and is not an empty folder; pass --overwrite to replace it, "
      "or choose a new folder")
  assert os.listdir(out) == ["notes.txt"]
  assert cli.main([*argv, "--overwrite"]) == 0
  assert sorted(os.listdir(out)) == ["encoder", "preprocessor"]


@pytest.mark.parametrize("seq_length, message", [
    ("65", "--seq-length 65 is out of range: the model has 64 positions (max_position_embeddings), so use 2 to 64"),
    ("1", "argument --seq-length: must be at least 2 ([CLS] and [SEP]), got 1"),
    ("x", "argument --seq-length: expected an integer, got 'x'"),
])
def test_export_with_an_out_of_range_seq_length_is_one_line(tiny_config_file, tiny_vocab_file, tmp_path, capsys,
                                                            seq_length, message):
  out = tmp_path / "model"
  try:
    code = cli.main(["export", "--from", f"random:{tiny_config_file}", "--vocab", tiny_vocab_file, "--output",
                     str(out), "--seq-length", seq_length])
  except SystemExit as e:  # argparse's own errors end the command
    code = e.code
  assert code == 2 and _one_line(capsys, "export") == f"bert-embed export: error: {message}"
  assert not out.exists()


# --- inputs that are the run's own files; a flag given twice ---------------------------------------

@pytest.mark.parametrize("own", ["emb-00000-of-00001.parquet", "emb-errors-00000-of-00001.jsonl", "emb-manifest.json",
                                 "LATEST"])
def test_an_input_glob_matching_the_runs_own_files_is_refused(tmp_path, capsys, own):
  data = tmp_path / "data"
  data.mkdir()
  _corpus(data / "a.txt", 2)
  (data / own).write_text("an earlier run's\n", encoding="utf-8")
  code = cli.main(["run", "--model", "no-such-model", "--input", f"{data}/*", "--output", str(data / "emb")])
  assert code == 2 and _one_line(capsys) == (
      f"bert-embed run: error: --input matches {data}/{own}, a file this run writes (--output {data}/emb, pointer "
      f"{data}/LATEST): narrow the input glob (e.g. dir/*.txt) or write the output elsewhere")


@pytest.mark.parametrize("link", ["symlink", "hard link"])
@pytest.mark.parametrize("own", ["emb-00000-of-00001.parquet", "emb-errors-00000-of-00001.jsonl", "emb-manifest.json",
                                 "LATEST", f"bert-embed-tmp-{'0' * 32}-emb/embeddings-1.parquet"])
def test_another_name_for_the_runs_own_files_is_refused(tmp_path, capsys, own, link):
  out, inputs = tmp_path / "out", tmp_path / "in"
  (out / own).parent.mkdir(parents=True)
  inputs.mkdir()
  _corpus(inputs / "a.txt", 2)
  (out / own).write_text("an earlier run's\n", encoding="utf-8")
  (os.symlink if link == "symlink" else os.link)(out / own, inputs / "b.txt")
  code = cli.main(["run", "--model", "no-such-model", "--input", f"{inputs}/*", "--output", str(out / "emb")])
  assert code == 2 and _one_line(capsys) == (
      f"bert-embed run: error: --input matches {inputs}/b.txt, a link to {out}/{own}, a file this run writes "
      f"(--output {out}/emb, pointer {out}/LATEST): narrow the input glob (e.g. dir/*.txt) or write the output "
      "elsewhere")


def test_another_prefixs_files_and_look_alikes_are_inputs_like_any_other(tmp_path):
  from pipeline.config import check_inputs_are_not_outputs  # pylint: disable=import-outside-toplevel
  data = tmp_path / "data"
  others = [data / name for name in ("emb-large-00000-of-00001.parquet", "emb-00000-of-00001.parquet.bak",
                                     "emb.txt", "LATEST.txt", "other-manifest.json")]
  check_inputs_are_not_outputs([str(p) for p in others], str(data / "emb"), str(data / "LATEST"))
  for own in (data / "x" / ".." / "emb-manifest.json.tmp-0a1b", data / "LATEST.tmp-0a1b",
              data / f"beam-temp-embeddings-{'0' * 32}-emb" / "part.parquet",
              data / f"bert-embed-tmp-{'0' * 32}-emb" / "embeddings-1.parquet"):
    with pytest.raises(UsageError, match="a file this run writes"):
      check_inputs_are_not_outputs([str(own)], str(data / "emb"), str(data / "LATEST"))
  # Remote paths are compared by name only: another object beside the output is an input like any other.
  check_inputs_are_not_outputs(["gs://b/data/corpus.jsonl"], "gs://b/data/emb", "gs://b/data/LATEST")
  with pytest.raises(UsageError, match="a file this run writes"):
    check_inputs_are_not_outputs(["gs://b/data/emb-manifest.json"], "gs://b/data/emb", "gs://b/data/LATEST")


@pytest.mark.parametrize("flags, message", [
    (["--pooling", "cls", "--pooling", "mean"], "--pooling is given more than once, with different values ('cls', "
                                                "'mean'); give it once"),
    (["--seq-length", "32", "--seq_length=64"], "--seq-length is given more than once, with different values (32, "
                                                "64); give it once"),
    (["--format", "parquet", "--output-format", "tfrecord"], "--format is given more than once, with different "
                                                             "values ('parquet', 'tfrecord'); give it once"),
    (["--normalize", "--normalize=false"], "--normalize is given more than once, with different values (True, "
                                           "False); give it once"),
    (["--temp_location", "/tmp/a", "--temp_location=/tmp/b"], "--temp_location is given more than once, with "
                                                               "different values ('/tmp/a', '/tmp/b'); give it once"),
])
def test_a_flag_given_twice_with_different_values_is_refused(tmp_path, capsys, flags, message):
  corpus = _corpus(tmp_path / "in.txt", 2)
  code = cli.main(["run", "--model", "m", "--input", corpus, "--output", str(tmp_path / "emb"), *flags])
  assert code == 2 and _one_line(capsys) == f"bert-embed run: error: {message}"


def test_beam_options_that_collect_their_repeats_pass_the_check():
  from pipeline import arguments  # pylint: disable=import-outside-toplevel
  known = arguments.check_with_beam(["--experiments", "a", "--experiments", "b", "--temp_location", "/t",
                                     "--temp_location", "/t", "--input", "x", "--output", "o"])
  assert "--experiments" in known


def test_the_same_value_twice_and_repeated_inputs_pass_the_check():
  from pipeline import arguments  # pylint: disable=import-outside-toplevel
  arguments.check_repeated(["--input", "a", "--input", "b", "--output", "o", "--pooling", "cls", "--pooling=cls",
                            "--normalize", "--normalize=true", "--model", "m"])
