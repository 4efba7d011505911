"""Tests for pipeline/manifest.py: the manifest step on the DirectRunner and output clean-up."""
from __future__ import annotations

import datetime
import glob
import json
import os
from unittest import mock

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing import test_pipeline

from pipeline import manifest
from transforms import write
from formats.output_files import is_error_file, is_output_file
from transforms.validate import ValidateEmbeddings
from formats.records import DeadLetter, EmbeddingRecord

DIM = 4
COUNT_NAMES = ("read", "written", "dead_lettered", "blank_lines", "files_failed")


def make_records(n: int) -> list[EmbeddingRecord]:
  rng = np.random.default_rng(0)
  return [EmbeddingRecord(f"doc-{i}", rng.standard_normal(DIM).astype(np.float32), 3, False, "0" * 64)
          for i in range(n)]


def ones(pcoll, label: str):
  return pcoll | label >> beam.Map(lambda _: 1)


def run_embedding_pipeline(prefix: str, records, *, read_errors=(), blank_lines=(), num_shards=0,
                           static_fields=None) -> dict:
  """A miniature of the real pipeline's tail: validate, write, dead-letter, then the manifest."""
  p = test_pipeline.TestPipeline()
  rows = p | "Rows" >> beam.Create(records, reshuffle=False)
  earlier_errors = p | "ReadErrors" >> beam.Create(list(read_errors), reshuffle=False)
  checked = rows | ValidateEmbeddings(DIM)
  output_files = checked.valid | write.WriteEmbeddings(
      prefix, write.WriteConfig("parquet", DIM, num_shards=num_shards))
  dead_letters = (earlier_errors, checked.dead_letters) | "AllDeadLetters" >> beam.Flatten()
  error_files = dead_letters | write.WriteDeadLetters(prefix)
  inputs = {
      "files": (output_files, error_files) | "AllFiles" >> beam.Flatten(),
      "counts": {
          "read": ones(rows, "CountRead"),
          "written": ones(checked.valid, "CountWritten"),
          "dead_lettered": ones(dead_letters, "CountDead"),
          "blank_lines": p | "BlankLines" >> beam.Create(list(blank_lines), reshuffle=False),
          "files_failed": p | "FilesFailed" >> beam.Create([], reshuffle=False),
      },
  }
  fields = {"dimension": DIM, "start_time": manifest.utc_now_iso()} if static_fields is None else static_fields
  _ = inputs | manifest.WriteManifest(prefix, fields, COUNT_NAMES)
  p.run().wait_until_finish()
  return manifest.read_manifest(prefix)


def shard_files(prefix: str) -> list[str]:
  return sorted(glob.glob(f"{prefix}-*-of-*.*"))


def test_manifest_lists_the_files_on_disk_with_counts_and_invariant(tmp_path):
  prefix = str(tmp_path / "emb")
  bad = make_records(1)[0]._replace(id="bad", embedding=np.full(DIM, np.nan, np.float32))
  read_error = DeadLetter.make("x", "in.txt", "read", "unreadable")
  fields = {"model": "gs://models/bert", "dimension": DIM, "start_time": manifest.utc_now_iso(),
            "versions": manifest.package_versions()}
  path = manifest.manifest_path(prefix)
  opened, renames = [], []  # every file opened for writing; each rename onto the manifest, with the shards then
  real_create, real_rename = FileSystems.create, FileSystems.rename

  def create(name, *args, **kwargs):
    opened.append(name)
    return real_create(name, *args, **kwargs)

  def rename(sources, destinations):
    if path in destinations:
      renames.append((list(sources), list(destinations), shard_files(prefix)))
    return real_rename(sources, destinations)

  with mock.patch.object(FileSystems, "create", create), mock.patch.object(FileSystems, "rename", rename):
    got = run_embedding_pipeline(prefix, make_records(10) + [bad], read_errors=[read_error],
                                 blank_lines=[2, 0, 3], static_fields=fields)

  on_disk = shard_files(prefix)
  assert got["files"] == on_disk  # everything the sinks finalized, and nothing else
  assert got["output_files"] == [f for f in on_disk if f.endswith(".parquet")]
  assert got["error_files"] == [f for f in on_disk if "-errors-" in f]
  assert got["output_files"] and got["error_files"]
  assert got["schema_version"] == manifest.SCHEMA_VERSION
  for key, value in fields.items():
    assert got[key] == value
  # dead_lettered also holds the read-stage error, which "read" never saw.
  assert got["counts"] == {"read": 11, "written": 10, "dead_lettered": 2, "blank_lines": 5, "files_failed": 0}
  assert got["invariant"] == {"read_equals_written_plus_dead_lettered": False}
  end = datetime.datetime.fromisoformat(got["end_time"])
  assert end.utcoffset() == datetime.timedelta(0)
  assert end >= datetime.datetime.fromisoformat(fields["start_time"])
  # Atomic: never opened for writing under its own name, but written whole to a temporary file renamed onto it
  # once, when every file it lists was already in place; no temporary file is left behind.
  (source,), _, shards_then = renames[0]
  assert len(renames) == 1 and path not in opened and source in opened and source.startswith(path + ".tmp-")
  assert shards_then == on_disk
  assert sorted(glob.glob(f"{prefix}*")) == sorted(on_disk + [path])
  assert manifest.read_manifest(path) == got


def test_empty_input_gives_files_and_zero_counts(tmp_path):
  prefix = str(tmp_path / "emb")
  got = run_embedding_pipeline(prefix, [])
  assert [os.path.basename(f) for f in got["files"]] == ["emb-00000-of-00001.parquet",
                                                         "emb-errors-00000-of-00001.jsonl"]
  assert got["files"] == shard_files(prefix)
  assert got["counts"] == {name: 0 for name in COUNT_NAMES}
  assert got["invariant"] == {"read_equals_written_plus_dead_lettered": True}


def test_rerun_after_delete_previous_outputs_replaces_everything(tmp_path):
  prefix = str(tmp_path / "emb")
  first = run_embedding_pipeline(prefix, make_records(6), num_shards=3)
  assert len(first["output_files"]) == 3
  assert first["invariant"] == {"read_equals_written_plus_dead_lettered": True}

  deleted = manifest.delete_previous_outputs(prefix)
  assert deleted[0] == manifest.manifest_path(prefix)
  assert sorted(deleted[1:]) == first["files"]
  assert not glob.glob(f"{prefix}*")

  second = run_embedding_pipeline(prefix, make_records(4), num_shards=1)
  assert second["files"] == shard_files(prefix)
  assert len(second["output_files"]) == 1
  assert second["counts"]["written"] == 4


def test_manifest_without_invariant_counts(tmp_path):
  prefix = str(tmp_path / "emb")
  p = test_pipeline.TestPipeline()
  files = p | "Files" >> beam.Create(["b", "a"], reshuffle=False)
  tokens = p | "Tokens" >> beam.Create([5, 7], reshuffle=False)
  result = {"files": files, "counts": {"tokens": tokens}} | manifest.WriteManifest(prefix, {}, ("tokens",))
  _ = result | beam.Map(lambda m: m["counts"])
  p.run().wait_until_finish()
  got = manifest.read_manifest(prefix)
  assert got["files"] == ["a", "b"]
  assert got["counts"] == {"tokens": 12}
  assert "invariant" not in got


def test_write_manifest_checks_its_arguments():
  with pytest.raises(ValueError, match="own keys"):
    manifest.WriteManifest("out/emb", {"counts": 1}, ())
  with pytest.raises(TypeError):
    manifest.WriteManifest("out/emb", {"when": object()}, ())
  p = test_pipeline.TestPipeline()
  files = p | beam.Create([], reshuffle=False)
  with pytest.raises(ValueError, match=r"counts \['raed'\] are not among the count names \['read'\]"):
    _ = {"files": files, "counts": {"raed": files}} | "Typo" >> manifest.WriteManifest("out/emb", {}, ("read",))
  with pytest.raises(ValueError, match="each other's names"):
    _ = ({"files": files, "fields": {"drift": files}, "tallies": {"drift": files}}
         | "Clash" >> manifest.WriteManifest("out/emb", {}, ()))


# ------------------------------------------------------------------------------------------------
# Clean-up of earlier outputs.


def touch(path) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("x")
  return str(path)


def test_delete_previous_outputs_only_touches_its_own_prefix(tmp_path, monkeypatch):
  out = tmp_path / "out"
  own = [touch(out / name) for name in (
      "emb-manifest.json", "emb-manifest.json.tmp-" + "0" * 32, "emb-00000-of-00002.parquet",
      "emb-00001-of-00002.parquet", "emb-00000-of-00001.tfrecord", "emb-errors-00000-of-00001.jsonl",
      "emb-errors-00003-of-00004.jsonl")]
  others = [touch(out / name) for name in (
      "emb2-00000-of-00001.parquet", "emb2-manifest.json", "emb2-errors-00000-of-00001.jsonl",
      "emb-x-00000-of-00001.parquet", "emb-errors-manifest.json", "emb-errors2-00000-of-00001.jsonl",
      "emb-0000-of-00001.parquet", "emb.parquet", "emb-notes.txt", "xemb-00000-of-00001.parquet",
      "sub/emb-00000-of-00001.parquet", "emb-large-00000-of-00001.parquet", "emb-large-manifest.json",
      "emb-large-errors-00000-of-00001.jsonl", "emb-00007-of-00009.parquet.bak", "emb-00000-of-00001.jsonl",
      "emb-errors-00000-of-00001.parquet", "emb-errors-errors-00000-of-00001.jsonl",
      "emb-errors-00000-of-00001.jsonl.bak", "emb-000000-of-000001.parquet", "emb-manifest.json.bak",
      "emb-manifest.json.tmp-xyz")]
  calls = []
  real_delete = FileSystems.delete
  monkeypatch.setattr(FileSystems, "delete", lambda paths: (calls.append(list(paths)), real_delete(paths)))

  deleted = manifest.delete_previous_outputs(str(out / "emb"))

  assert calls[0] == [str(out / "emb-manifest.json")]  # the manifest goes first, on its own
  assert sorted(deleted) == sorted(own)
  assert all(not os.path.exists(p) for p in own)
  assert all(os.path.exists(p) for p in others)
  assert manifest.delete_previous_outputs(str(out / "emb")) == []


def _corpus(path, lines: list[str]) -> str:
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def _run(model_dir: str, corpus: str, prefix: str, *extra: str):
  from pipeline.run import run  # pylint: disable=import-outside-toplevel
  argv = ["--model", model_dir, "--input", corpus, "--input-format", "jsonl", "--output", prefix,
          "--seq-length", "32", "--pooling", "mean", *extra]
  return run(argv, test_pipeline=test_pipeline.TestPipeline(argv=argv))


def _own_files(directory, prefix: str) -> list[str]:
  names = (str(directory / n) for n in os.listdir(directory))
  return sorted(p for p in names if is_output_file(p, prefix) or is_error_file(p, prefix))


def test_runs_with_overlapping_prefixes_in_one_directory_keep_each_others_outputs(tmp_path, tiny_model_dir):
  out = tmp_path / "out"
  out.mkdir()
  decoys = {name: f"{name} is not an output".encode() for name in (
      "emb-00007-of-00009.parquet.bak", "emb-notes.txt", "emb-00000-of-00001.json", "emb-manifest.json.bak")}
  for name, data in decoys.items():
    (out / name).write_bytes(data)
  runs = {  # prefix -> (texts, extra options); each has one bad line, so each writes a dead letter
      "emb-large": (["a big dog.", "the red car.", "hello world."], ["--format", "tfrecord"]),
      "emb": (["good day.", "blue tree.", "big house.", "a bird."], ["--format", "parquet"]),
  }  # (the sinks' own test covers emb-errors)
  manifests = {}
  for prefix, (texts, extra) in runs.items():
    lines = [json.dumps({"id": f"{prefix}:{i}", "text": t}) for i, t in enumerate(texts)] + ["{not json"]
    outcome = _run(tiny_model_dir, _corpus(tmp_path / f"{prefix}.jsonl", lines), str(out / prefix), *extra)
    manifests[prefix] = outcome.manifest
  for prefix, (texts, extra) in runs.items():
    m = manifest.read_manifest(str(out / prefix))
    assert m == manifests[prefix]
    assert m["files"] == _own_files(out, str(out / prefix))  # exactly its files, all still there
    assert m["counts"]["written"] == len(texts) and m["counts"]["dead_lettered"] == 1
    ids = []
    for path in m["output_files"]:
      if extra[1] == "parquet":
        ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
      else:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        ids += [tf.train.Example.FromString(r.numpy()).features.feature["id"].bytes_list.value[0].decode()
                for r in tf.data.TFRecordDataset(path)]
    assert sorted(ids) == sorted(f"{prefix}:{i}" for i in range(len(texts)))
    errors = [json.loads(line) for path in m["error_files"] for line in open(path, encoding="utf-8")]
    assert [e["snippet"] for e in errors] == ["{not json"]
  for name, data in decoys.items():
    assert (out / name).read_bytes() == data
  assert not [n for n in os.listdir(out) if n.startswith("beam-temp-")]


def test_prefixes_with_glob_characters_are_refused(tmp_path):
  survivor = touch(tmp_path / "emb-00000-of-00001.parquet")
  for prefix in ("e*b", "e?b", "e[m]b"):
    with pytest.raises(ValueError, match="glob"):
      manifest.delete_previous_outputs(str(tmp_path / prefix))
  with pytest.raises(ValueError, match="glob"):
    manifest.WriteManifest(str(tmp_path / "e*b"), {}, ())
  assert os.path.exists(survivor)


# ------------------------------------------------------------------------------------------------
# Small pieces.


def test_paths_versions_and_reading():
  assert manifest.manifest_path("gs://b/out/emb") == "gs://b/out/emb-manifest.json"
  versions = manifest.package_versions()
  assert set(versions) == {"apache-beam", "tensorflow", "tensorflow-text", "tfx-bsl", "pyarrow", "numpy",
                           "bert-embed"}
  assert versions["apache-beam"] == beam.__version__
  assert manifest.package_versions(("no-such-package-xyz",)) == {"no-such-package-xyz": None}


def test_write_atomically_replaces_and_read_manifest_checks_version(tmp_path):
  path = str(tmp_path / "emb-manifest.json")
  manifest.write_atomically(path, json.dumps({"schema_version": 1, "n": 1}).encode())
  manifest.write_atomically(path, json.dumps({"schema_version": 1, "n": 2}).encode())
  assert manifest.read_manifest(str(tmp_path / "emb")) == {"schema_version": 1, "n": 2}
  assert os.listdir(tmp_path) == ["emb-manifest.json"]
  manifest.write_atomically(path, json.dumps({"schema_version": manifest.SCHEMA_VERSION + 1}).encode())
  with pytest.raises(ValueError, match="schema_version"):
    manifest.read_manifest(path)
