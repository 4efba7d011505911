"""A run's outcome as a whole (snapshot/commit.py): a broken run fails, a failed run keeps the last good output,
and `--previous` carries only the shards its manifest describes (transforms/previous_rows.py)."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline

from formats.columns import OutputColumns
from formats.output_files import EMBEDDING_FINGERPRINT_KEY, staging_dir
from formats.records import DeadLetter, EmbeddingRecord
from snapshot import checks as checks_lib
from snapshot import commit
from transforms import commit_steps
from snapshot import previous as previous_lib
from snapshot.manifest import read_manifest
from pipeline.run import run
from transforms import previous_rows, write
from transforms.duplicate_ids import DuplicateIdError

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEQ = 32
WORDS = "the cat sat on mat dog bird fish red blue green big small house tree car".split()
# Lines TensorFlow's native code and Beam's start-up print on their own (not the command's doing).
_START_UP_NOISE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::InitializeLog|"
                             r"WARNING root: Resource module is not available)")


def _texts(n: int) -> list[str]:
  return [" ".join(WORDS[(i * k + k) % len(WORDS)] for k in range(1, 4 + i % 5)) + "." for i in range(n)]


def _corpus(path: pathlib.Path, n: int, bad: int = 0, id_field: str = "id") -> str:
  lines = [json.dumps({id_field: f"doc/{i}", "text": t}) for i, t in enumerate(_texts(n))]
  for k in range(bad):  # spread through the file
    lines.insert((k + 1) * len(lines) // (bad + 1), "{not json " + str(k))
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def _argv(model_dir: str, corpus: str, output: str, *extra: str) -> list[str]:
  pooling = [] if "--pooling" in extra else ["--pooling", "mean"]
  return ["--model", model_dir, "--input", corpus, "--input-format", "jsonl", "--output", output,
          "--seq-length", str(SEQ), *pooling, *extra]


def _run(model_dir: str, corpus: str, output: str, *extra: str):
  argv = _argv(model_dir, corpus, output, *extra)
  return run(argv, test_pipeline=TestPipeline(argv=argv))


def _snapshot(directory: pathlib.Path) -> dict:
  """Every regular file under `directory` (recursively) and its bytes, except staging directories."""
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
          if p.is_file() and not any(part.startswith("bert-embed-tmp-") for part in p.relative_to(directory).parts)}


def _staging_dirs(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir() if p.name.startswith("bert-embed-tmp-"))


def _vectors(manifest: dict) -> dict:
  rows = [row for path in manifest["output_files"] for row in pq.read_table(path).to_pylist()]
  return {row["id"]: np.asarray(row["embedding"], np.float64) for row in rows}


def _cosine(a, b) -> float:
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_all_garbage_input_fails_in_one_line_and_keeps_the_earlier_output(tiny_model_dir, tmp_path):
  """`--id-field doc_id` on data whose field is `id`: every record is dead-lettered. The run fails (exit 1, one line
  with the fraction, the most common reason and an example id), LATEST does not move, the earlier output stays byte
  for byte and is what the next `--previous latest:` uses; that run removes the failed run's staged files, and
  never a staging directory of another prefix."""
  root = tmp_path / "root"
  _run(tiny_model_dir, _corpus(tmp_path / "v1.jsonl", 40), str(root / "emb"))
  before = _snapshot(root)
  run2 = root / "run2"
  run2.mkdir()
  other = run2 / ("bert-embed-tmp-" + "c" * 32 + "-emb-large")  # a concurrent run of another prefix
  other.mkdir()
  (other / "embeddings-x.parquet").write_bytes(b"another run's staged shard")

  proc = subprocess.run([sys.executable, "-m", "cli", "run", *_argv(
      tiny_model_dir, _corpus(tmp_path / "v2.jsonl", 40), str(run2 / "emb"), "--id-field", "doc_id",
      "--previous", f"latest:{root}")], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  lines = [line for line in proc.stderr.splitlines() if line.strip() and not _START_UP_NOISE.match(line)]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr
  assert re.fullmatch(
      r"bert-embed run: error: 40 of 40 records dead-lettered \(100\.0%\), above --max-dead-letter-fraction 0\.1; "
      r"most common reason \(40 records\): parse: missing id field 'doc_id'; e\.g\. id '\S*v2\.jsonl:\d+'; "
      r"nothing was replaced at \S*run2/emb \(.*\)", lines[0]), lines[0]
  assert _snapshot(root) == before  # LATEST, manifest, shards and dead letters as they were; nothing at run2/emb
  assert len(_staging_dirs(run2)) == 2  # the failed run's files, kept aside, and the other prefix's

  again = _run(tiny_model_dir, _corpus(tmp_path / "v3.jsonl", 40), str(run2 / "emb"), "--previous", f"latest:{root}")
  assert again.manifest["incremental"]["previous"] == str(root / "emb")
  assert again.manifest["counts"]["unchanged"] == 40 and again.manifest["counts"]["encoded"] == 0
  assert (root / "LATEST").read_text(encoding="utf-8").strip() == str(run2 / "emb")
  assert _staging_dirs(run2) == [other.name]
  assert (other / "embeddings-x.parquet").read_bytes() == b"another run's staged shard"


def test_a_few_bad_lines_in_a_corpus_still_succeed_up_to_exactly_the_default_fraction(tiny_model_dir, tmp_path):
  """--max-dead-letter-fraction 0.1 (the default): 10 of 100 records dead-lettered is committed, 11 of 100 is not."""
  out = tmp_path / "out"
  outcome = _run(tiny_model_dir, _corpus(tmp_path / "in.jsonl", 90, bad=10), str(out / "emb"))
  c = outcome.manifest["counts"]
  assert (c["read"], c["written"], c["dead_lettered"]) == (100, 90, 10)
  assert outcome.manifest["checks"] == {"max_dead_letter_fraction": 0.1, "dead_letter_fraction": 0.1}
  assert _staging_dirs(out) == []
  before = _snapshot(out)
  with pytest.raises(checks_lib.RunCheckError, match=r"^11 of 100 records dead-lettered \(11\.0%\), above "
                                                   r"--max-dead-letter-fraction 0\.1; "):
    _run(tiny_model_dir, _corpus(tmp_path / "eleven.jsonl", 89, bad=11), str(out / "emb"))
  assert _snapshot(out) == before


def test_a_run_that_fails_after_writing_leaves_the_previous_run_byte_identical(tiny_model_dir, tmp_path):
  """`--on-duplicate-id fail` stops the job after its shards are being written; the earlier files, manifest and
  LATEST are untouched (the job used to delete them in its first step)."""
  root = tmp_path / "root"
  _run(tiny_model_dir, _corpus(tmp_path / "v1.jsonl", 30), str(root / "emb"))
  before = _snapshot(root)
  src = tmp_path / "dup.jsonl"
  src.write_text("".join(json.dumps({"id": f"d{i % 20}", "text": t}) + "\n" for i, t in enumerate(_texts(30))),
                 encoding="utf-8")
  with pytest.raises(DuplicateIdError):
    _run(tiny_model_dir, str(src), str(root / "emb"), "--on-duplicate-id", "fail")
  assert _snapshot(root) == before
  with pytest.raises(checks_lib.RunCheckError, match=r"^30 of 30 records dead-lettered \(100\.0%\)"):
    _run(tiny_model_dir, _corpus(tmp_path / "v2.jsonl", 30), str(root / "emb"), "--text-field", "body")
  assert _snapshot(root) == before
  # 1 turns the check off: the same run is committed.
  outcome = _run(tiny_model_dir, _corpus(tmp_path / "v2.jsonl", 30), str(root / "emb"), "--text-field", "body",
                 "--max-dead-letter-fraction", "1")
  assert outcome.manifest["counts"]["dead_lettered"] == 30 and outcome.manifest["counts"]["written"] == 0


def test_previous_does_not_carry_shards_another_run_rewrote(tiny_model_dir, tmp_path, monkeypatch):
  """Run A (mean pooling) is done. A run B with `--previous` A resolves A's manifest; before its workers read
  A's shards, another run rewrites them (the shards of a `--pooling cls --normalize` run over the same records).
  B must not carry those vectors: the shards do not match A's manifest, so every record is encoded again."""
  corpus = _corpus(tmp_path / "in.jsonl", 24)
  root = tmp_path / "root"
  a = _run(tiny_model_dir, corpus, str(root / "a" / "emb"))
  other = _run(tiny_model_dir, corpus, str(tmp_path / "other" / "emb"), "--pooling", "cls", "--normalize")
  assert [os.path.basename(f) for f in a.manifest["output_files"]] == [
      os.path.basename(f) for f in other.manifest["output_files"]]
  expected, theirs = _vectors(a.manifest), _vectors(other.manifest)  # (before A's files are overwritten)
  real_plan = previous_lib.plan

  def plan_then_rewrite(cfg):
    p = real_plan(cfg)
    for ours, theirs in zip(a.manifest["output_files"], other.manifest["output_files"]):
      shutil.copyfile(theirs, ours)
    return p

  monkeypatch.setattr(previous_lib, "plan", plan_then_rewrite)
  b = _run(tiny_model_dir, corpus, str(root / "b" / "emb"), "--previous", str(root / "a" / "emb"))
  assert b.manifest["incremental"]["mode"] == "incremental"
  assert "changed since that run" in b.manifest["incremental"]["reason"], b.manifest["incremental"]
  assert b.manifest["counts"]["encoded"] == 24 and b.manifest["counts"]["written"] == 24
  got = _vectors(b.manifest)
  assert set(got) == set(expected)
  for record_id, vector in got.items():
    assert _cosine(vector, expected[record_id]) > 0.9999
    assert _cosine(vector, theirs[record_id]) < 0.99


# ------------------------------------------------------------------------------------------------
# The pieces, without a model.

DIM = 4


def _records(n: int) -> list[EmbeddingRecord]:
  rng = np.random.default_rng(3)
  return [EmbeddingRecord(f"r{i}", rng.standard_normal(DIM).astype(np.float32), 3, False, f"{i:064x}")
          for i in range(n)]


def _write(prefix: str, output_format: str, metadata=None) -> dict:
  """10 rows in 2 shards; {path: (size, sha256 of the bytes on disk, rows)}."""
  p = TestPipeline()
  config = write.WriteConfig(output_format, DIM, num_shards=2, file_metadata=metadata, batch_bytes=1)
  _ = p | beam.Create(_records(10), reshuffle=False) | write.WriteEmbeddings(prefix, config)
  p.run().wait_until_finish()
  files = {}
  for path in sorted(glob.glob(prefix + "-0000?-of-00002.*")):
    data = open(path, "rb").read()
    rows = pq.read_metadata(path).num_rows if output_format == "parquet" else None
    files[path] = (len(data), hashlib.sha256(data).hexdigest(), rows)
  assert len(files) == 2
  return files


def _read_previous(files: dict, output_format: str, identities, out: pathlib.Path) -> tuple[list, list]:
  p = TestPipeline()
  read = p | previous_rows.ReadPreviousEmbeddings(sorted(files), output_format, DIM, OutputColumns(), identities)
  for label, pcoll in (("rows", read.rows | "Ids" >> beam.Map(lambda r: r.id)), ("unreadable", read.unreadable)):
    _ = (pcoll | f"All[{label}]" >> beam.combiners.ToList()
         | f"Save[{label}]" >> beam.Map(lambda xs, path: pathlib.Path(path).write_text(json.dumps(sorted(xs))),
                                        str(out / f"{label}.json")))
  p.run().wait_until_finish()
  return json.loads((out / "rows.json").read_text()), json.loads((out / "unreadable.json").read_text())


@pytest.mark.parametrize("output_format", ["parquet", "tfrecord"])
def test_a_previous_shard_that_does_not_match_its_identity_is_unreadable(tmp_path, output_format):
  fingerprint = "f" * 64
  files = _write(str(tmp_path / "emb"), output_format, {EMBEDDING_FINGERPRINT_KEY: fingerprint})
  footer = fingerprint if output_format == "parquet" else None
  identities = {path: previous_rows.ShardIdentity(size, sha, footer) for path, (size, sha, _) in files.items()}
  rows, unreadable = _read_previous(files, output_format, identities, tmp_path)
  assert rows == sorted(f"r{i}" for i in range(10)) and unreadable == []
  first, second = sorted(files)
  wrong = dict(identities)
  wrong[first] = identities[first]._replace(sha256="0" * 64)  # same size, another hash: another file
  rows, unreadable = _read_previous(files, output_format, wrong, tmp_path)
  assert 0 < len(rows) < 10 and [path for path, _ in unreadable] == [first]
  assert "changed since that run" in unreadable[0][1]
  if output_format == "parquet":  # the right bytes, but a footer of another fingerprint
    assert len(rows) == files[second][2]
    other = {path: i._replace(fingerprint="e" * 64) for path, i in identities.items()}
    rows, unreadable = _read_previous(files, output_format, other, tmp_path)
    assert rows == [] and sorted(path for path, _ in unreadable) == [first, second]
    assert "embedding fingerprint" in unreadable[0][1]
    assert pq.read_schema(first).metadata[EMBEDDING_FINGERPRINT_KEY.encode()] == fingerprint.encode()


def test_the_dead_letter_check_names_the_commonest_reason_class():
  letters = [DeadLetter.make(f"a:{i}", "a", "parse", f"bad JSON at line {i} column {2 * i}") for i in range(5)]
  reasons = {}
  for letter in letters + [DeadLetter.make("b:1", "b", "read", "gzip failed")]:
    key, example = checks_lib.reason_and_id(letter)  # pylint: disable=protected-access
    n, first = reasons.get(key, (0, example))
    reasons[key] = (n + 1, min(first, example))
  assert reasons == {"parse: bad JSON at line N column N": (5, "a:0"), "read: gzip failed": (1, "b:1")}
  counts = {"read": 10, "written": 4, "dead_lettered": 6}
  expected = (r"^6 of 10 records dead-lettered \(60\.0%\), above --max-dead-letter-fraction 0\.5; most common reason "
              r"\(5 records\): parse: bad JSON at line N column N; e\.g\. id 'a:0'; kept$")
  with pytest.raises(checks_lib.RunCheckError, match=expected):
    checks_lib.check_run(counts, reasons, checks_lib.RunChecks(0.5), "kept")
  checks_lib.check_run(counts, reasons, checks_lib.RunChecks(0.6), "kept")  # at the threshold: passes
  checks_lib.check_run(counts, reasons, checks_lib.RunChecks(1.0), "kept")
  checks_lib.check_run({"read": 0, "written": 0, "dead_lettered": 0}, {}, checks_lib.RunChecks(0.0), "kept")
  with pytest.raises(checks_lib.RunCheckError, match="do not balance: 10 records read, but 4 written"):
    checks_lib.check_run({"read": 10, "written": 4, "dead_lettered": 5}, reasons, checks_lib.RunChecks(1.0), "kept")


def test_a_finalizer_commits_after_the_checks_and_before_the_files_replace_the_earlier_output(tmp_path):
  """The hook a vector store's swap plugs into: it runs only when the checks pass, before the prefix's files are
  touched (a finalizer that raises leaves the earlier output and its manifest byte for byte), and its fields go in
  the manifest."""
  prefix = str(tmp_path / "emb")
  seen = tmp_path / "seen.json"

  class Recorder(commit.Finalizer):
    name = "recorder"

    def __init__(self, fail: bool = False):
      self._fail = fail

    def commit(self, committed):
      seen.write_text(json.dumps({"files": [os.path.basename(f.path) for f in committed.files],
                                  "on_disk": sorted(os.listdir(tmp_path)), "counts": dict(committed.counts)}))
      if self._fail:
        raise RuntimeError("the store refused the swap")
      return {"recorder": {"committed": True}}

  def go(read: int, records: int = 3, fail: bool = False):
    p = TestPipeline()
    staging = staging_dir(prefix, ("c" if fail else "b") * 32)
    config = write.WriteConfig("parquet", DIM)
    files = (p | beam.Create(_records(records), reshuffle=False)
             | write.WriteEmbeddings(prefix, config, staging_dir=staging))
    counts = {"read": p | "Read" >> beam.Create([read]), "written": p | "Written" >> beam.Create([records]),
              "dead_lettered": p | "Dead" >> beam.Create([0])}
    _ = ({"files": files, "counts": counts}
         | commit_steps.Finalize(prefix, staging, {}, ("read", "written", "dead_lettered"),
                             {"embeddings": write.embedding_sink(config)}, finalizers=[Recorder(fail)]))
    p.run().wait_until_finish()

  with pytest.raises(checks_lib.RunCheckError):
    go(read=4)
  assert not seen.exists()
  go(read=3)
  record = json.loads(seen.read_text())
  assert record["counts"]["written"] == 3 and len(record["files"]) == 1
  assert "emb-00000-of-00001.parquet" not in record["on_disk"] and "emb-manifest.json" not in record["on_disk"]
  assert read_manifest(prefix)["recorder"] == {"committed": True}
  before = {name: (tmp_path / name).read_bytes() for name in ("emb-00000-of-00001.parquet", "emb-manifest.json")}
  with pytest.raises(Exception, match="the store refused the swap"):
    go(read=5, records=5, fail=True)
  assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_commit_killed_between_any_two_of_its_steps_leaves_no_manifest_vouching_for_other_files(tmp_path,
                                                                                                  monkeypatch):
  """The commit is killed before each of its file operations in turn (from the Finalize step on: deletes and
  renames), each time over the same earlier output of 2 shards, the new run having 3. What a kill leaves has either
  no manifest, or a manifest listing exactly the prefix's shards on disk, each with its size and SHA-256: the old
  manifest is gone before any old shard is deleted or replaced."""
  out = tmp_path / "out"
  prefix, baseline = str(out / "emb"), tmp_path / "baseline"
  state = {"armed": False, "ops": 0, "kill_at": None}

  def go(records: int, shards: int):
    p = TestPipeline()
    staging = staging_dir(prefix, "d" * 32)
    config = write.WriteConfig("parquet", DIM, num_shards=shards, batch_bytes=1)
    files = (p | beam.Create(_records(records), reshuffle=False)
             | write.WriteEmbeddings(prefix, config, staging_dir=staging))
    counts = {name: p | name >> beam.Create([n]) for name, n in (("read", records), ("written", records),
                                                                  ("dead_lettered", 0))}
    _ = ({"files": files, "counts": counts}
         | commit_steps.Finalize(prefix, staging, {}, ("read", "written", "dead_lettered"),
                             {"embeddings": write.embedding_sink(config)}))
    p.run().wait_until_finish()

  def killable(real):
    def operation(*args, **kwargs):
      if state["armed"]:
        if state["kill_at"] is not None and state["ops"] >= state["kill_at"]:
          raise OSError("killed here")  # and at every later operation: the process is gone
        state["ops"] += 1
      return real(*args, **kwargs)
    return operation

  real_process = commit_steps._FinalizeFn.process  # pylint: disable=protected-access

  def process(self, facts, *after):
    state["armed"] = True
    yield from real_process(self, facts, *after)

  def vouched() -> list:
    """The shards the manifest vouches for ([] without a manifest), asserted to be exactly the prefix's, whole."""
    on_disk = sorted(p.name for p in out.glob("emb-0000?-of-0000?.parquet"))
    if not (out / "emb-manifest.json").exists():
      return []
    shards = read_manifest(prefix)["shards"]
    assert sorted(shards) == on_disk, state
    for name, identity in shards.items():
      data = (out / name).read_bytes()
      assert (len(data), hashlib.sha256(data).hexdigest()) == (identity["size_bytes"], identity["sha256"]), state
    return sorted(shards)

  go(records=10, shards=2)
  shutil.copytree(out, baseline)
  monkeypatch.setattr(FileSystems, "delete", killable(FileSystems.delete))
  monkeypatch.setattr(FileSystems, "rename", killable(FileSystems.rename))
  monkeypatch.setattr(commit_steps._FinalizeFn, "process", process)  # pylint: disable=protected-access
  left = []
  for kill_at in range(10):
    shutil.rmtree(out)
    shutil.copytree(baseline, out)
    state.update(armed=False, ops=0, kill_at=kill_at)
    try:
      go(records=15, shards=3)
    except Exception as e:  # pylint: disable=broad-except
      assert "killed here" in str(e), e
      left.append(vouched())
      continue
    break
  # Killed before: deleting the manifest, deleting the old shards / moving the new ones, the manifest's rename.
  assert left[0] == [f"emb-0000{i}-of-00002.parquet" for i in range(2)] and len(left) >= 3, left
  assert vouched() == [f"emb-0000{i}-of-00003.parquet" for i in range(3)]



def test_a_run_whose_staged_files_were_removed_fails_in_one_line_and_leaves_the_committed_output(tmp_path):
  """Two reruns of one prefix racing: the one that commits first removes the other's staging as a failed run's.
  The other's commit must then fail before it touches anything (not delete the winner's manifest and shards)."""
  import copy  # pylint: disable=import-outside-toplevel
  from formats.columns import records_to_table  # pylint: disable=import-outside-toplevel
  from snapshot import staging as staging_lib  # pylint: disable=import-outside-toplevel
  prefix = str(tmp_path / "emb")
  config = write.WriteConfig("parquet", DIM)
  sinks = {"embeddings": write.embedding_sink(config)}

  def staged(token: str, records: int):
    folder = staging_dir(prefix, token * 32)
    os.makedirs(folder)
    sink = copy.copy(sinks["embeddings"])
    path, handle = staging_lib.open_staged(folder, "embeddings", sink)
    sink.write(records_to_table(_records(records), config.columns, DIM, config.parquet_schema()))
    return folder, [staging_lib.close_staged("embeddings", path, handle, sink, records)]

  def facts(files, records):
    return {"counts": {"read": records, "written": records, "dead_lettered": 0}, "fields": {}, "tallies": {},
            "files": files}

  (winner, won), (loser, lost) = staged("a", 3), staged("b", 4)
  names = ("read", "written", "dead_lettered")
  commit.commit_run(commit.CommitPlan(prefix, winner, {}, names, sinks, None, ()), facts(won, 3))
  committed = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path) if n.startswith("emb-")}
  assert "emb-manifest.json" in committed
  shutil.rmtree(loser)  # as the winner's leftovers step removes a failed run's staging
  with pytest.raises(checks_lib.RunCheckError, match="staged files are gone .*nothing was replaced") as info:
    commit.commit_run(commit.CommitPlan(prefix, loser, {}, names, sinks, None, ()), facts(lost, 4))
  assert "\n" not in str(info.value)
  assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path) if n.startswith("emb-")} == committed


def test_a_staged_file_counts_as_moved_only_under_its_own_final_name_with_its_size(tmp_path):
  """The check before the commit (snapshot/staging.py check_staged) and the commit's own look for a staged file
  that is gone the same way: moved by an interrupted attempt means under its final name, with its size. Another
  file of the prefix with that size (an earlier output's shard of the same size) is not it."""
  from formats import sinks  # pylint: disable=import-outside-toplevel
  from formats.output_files import EMBEDDINGS  # pylint: disable=import-outside-toplevel
  from snapshot import staging as staging_lib  # pylint: disable=import-outside-toplevel
  prefix = str(tmp_path / "emb")
  staged = tmp_path / "staging"
  staged.mkdir()
  written = []
  for name in ("a.parquet", "b.parquet"):
    (staged / name).write_bytes(b"x" * 10)
    written.append(staging_lib.WrittenFile(EMBEDDINGS, str(staged / name), 10, hashlib.sha256(b"x" * 10).hexdigest(),
                                           1))
  kinds = {EMBEDDINGS: sinks.ParquetSink(pa.schema([]))}  # its extension: no file is written for a kind with files
  staging_lib.check_staged(prefix, str(staged), written, kinds)  # both there
  os.remove(staged / "b.parquet")
  (tmp_path / "emb-00007-of-00009.parquet").write_bytes(b"y" * 10)  # the prefix's, same size, another name
  with pytest.raises(checks_lib.RunCheckError, match="1 of this run's staged files are gone .*b.parquet"):
    staging_lib.check_staged(prefix, str(staged), written, kinds)
  with pytest.raises(IOError, match="b.parquet is gone"):
    staging_lib.commit_files(prefix, str(staged), written, kinds)
  assert sorted(os.listdir(staged)) == ["a.parquet"]  # nothing moved
  (tmp_path / "emb-00001-of-00002.parquet").write_bytes(b"x" * 10)  # moved by an interrupted attempt
  staging_lib.check_staged(prefix, str(staged), written, kinds)
  committed = staging_lib.commit_files(prefix, str(staged), written, kinds)
  assert [os.path.basename(w.path) for w in committed] == ["emb-00000-of-00002.parquet", "emb-00001-of-00002.parquet"]
  assert sorted(os.path.basename(p) for p in glob.glob(prefix + "-*")) == [
      "emb-00000-of-00002.parquet", "emb-00001-of-00002.parquet"]
