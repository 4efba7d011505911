"""The library leaves the program that uses it alone: its environment, the csv module's limit, its logging and its
stderr stay as they were; only the `bert-embed` command changes its own process. Cached models can be released."""
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import weakref

import numpy as np

from formats import csv_rows
from formats.fields import FileStats
from runtime import precision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program of the library's user: its own Beam pipeline with EmbedTexts (bf16, CSV input through ReadTexts),
# then embed(), then run() called as a function; it prints what changed in its process.
USER_PROGRAM = r'''
import csv, json, logging, os, sys

import apache_beam as beam

def state():
  root = logging.getLogger()
  return {"environ": dict(os.environ), "csv_limit": csv.field_size_limit(), "root_level": root.level,
          "root_filters": [repr(f) for f in root.filters], "root_handlers": [repr(h) for h in root.handlers],
          "handler_filters": [[repr(f) for f in h.filters] for h in root.handlers],
          "stderr": repr(sys.stderr), "fd2": os.readlink("/proc/self/fd/2")}

logging.basicConfig(level=logging.INFO)  # the user's own logging set-up
before = state()
model, csv_path, out = sys.argv[1:4]
from pipeline.api import embed
from pipeline.run import run
from transforms.embedding.embed import EmbedTexts
from transforms.embedding.embed_config import EmbedConfig
from transforms.read import ReadTexts

with beam.Pipeline() as p:
  read = p | ReadTexts([csv_path], input_format="csv")
  result = read.records | EmbedTexts(f"{model}/preprocessor", f"{model}/encoder",
                                     EmbedConfig(precision="bf16", seq_length=32))
  _ = (result.embeddings | beam.Map(lambda r: (r.id, len(r.embedding)))
       | beam.io.WriteToText(out + "/vectors", shard_name_template=""))
vectors = embed(["a text of the user", "another one"], model, seq_length=32)
run(["--model", model, "--input", csv_path, "--input-format", "csv", "--output", out + "/run/emb",
     "--seq-length", "32", "--precision", "bf16"])
after = state()
print(json.dumps({"changed": {k: [before[k], after[k]] for k in before if before[k] != after[k]},
                  "embed_shape": list(vectors.shape)}))
'''


def test_a_users_program_finds_its_process_as_it_left_it(tiny_model_dir, tmp_path):
  long_text = "word " * 40_000  # 200,000 characters: past the csv module's default field limit
  path = tmp_path / "in.csv"
  path.write_text(f'id,text\nshort,"the cat sat"\nlong,"{long_text}"\n', encoding="utf-8")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("BERT_EMBED_", "TF_AUTO_MIXED_PRECISION"))}
  env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  proc = subprocess.run([sys.executable, "-c", USER_PROGRAM, tiny_model_dir, str(path), str(tmp_path)],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  changed = report["changed"]
  if "environ" in changed:
    before, after = changed["environ"]
    changed["environ"] = {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                          if before.get(k) != after.get(k)}
  assert changed == {}
  assert report["embed_shape"] == [2, 32]
  vectors = (tmp_path / "vectors").read_text().splitlines()
  assert sorted(vectors) == ["('long', 32)", "('short', 32)"]  # the long field was read, not refused


def _rows(text: str, limit: int) -> list:
  """_csv_rows' rows and malformed rows of `text`, with the csv module's limit at `limit` meanwhile."""
  previous = csv.field_size_limit(limit)
  try:
    lines = iter(text.splitlines(keepends=True))
    rows = csv_rows._csv_rows(lines, None, FileStats())  # pylint: disable=protected-access
    return [(start, row if isinstance(row, list) else ("malformed", row.reason, row.snippet)) for start, row in rows]
  finally:
    csv.field_size_limit(previous)


def test_rows_past_the_csv_modules_limit_read_as_the_csv_module_reads_them_with_a_higher_limit():
  """The reference: the csv module itself with a limit no field reaches; under a limit of 2 characters nearly every
  row goes through this reader's own parser instead."""
  rng = random.Random(7)
  alphabet = ["a", "b", "é", " ", ",", ",", '"', '"', '""', "\r\n", "\n", "\r"]
  for _ in range(2000):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    assert _rows(text, 2) == _rows(text, 1 << 30), repr(text)
  text = 'id,text\r\n1,"' + "x" * 300_000 + '\r\nstill, quoted ""here"""\r\n2,"open' + "y" * 200_000 + "\r\n"
  rows = _rows(text, 131072)
  assert rows == _rows(text, 1 << 30)
  assert rows[1] == (2, ["1", "x" * 300_000 + '\r\nstill, quoted "here"'])
  assert rows[2][1][0] == "malformed" and "never closed" in rows[2][1][1]
  assert csv.field_size_limit() == 131072


def _list_variables() -> dict:
  return {k: v for k, v in os.environ.items() if k.startswith("TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_")}


def test_the_bf16_op_lists_are_in_the_environment_only_while_a_reduced_precision_call_runs():
  scope = precision.rewrite_scope(precision.rewrite_name("bf16", "/CPU:0"))
  assert _list_variables() == {}
  with scope():
    inside = _list_variables()
    with scope():  # nested (and concurrent) scopes share the setting
      assert _list_variables() == inside
    assert _list_variables() == inside
  assert _list_variables() == {}
  assert set(inside.values()) == {",".join(precision.FP32_OPS)} and len(inside) == 3
  # Concurrent scopes: the environment is restored when the last one ends.
  entered, leave = threading.Barrier(2), threading.Event()

  def hold():
    with scope():
      entered.wait(30)
      leave.wait(30)

  worker = threading.Thread(target=hold)
  worker.start()
  with scope():
    entered.wait(30)
  assert _list_variables() == inside  # the other thread is still inside
  leave.set()
  worker.join()
  assert _list_variables() == {}


def test_the_users_own_bf16_op_lists_are_left_as_they_are(monkeypatch):
  name = "TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_DENYLIST_ADD"
  monkeypatch.setenv(name, "Softmax")
  with precision.rewrite_scope(precision.rewrite_name("bf16", "/CPU:0"))():
    assert _list_variables() == {name: "Softmax"}
  assert _list_variables() == {name: "Softmax"}


def test_release_models_frees_what_embed_loaded(tiny_model_dir, tmp_path):
  """A private copy of the model, so that nothing else in the test session holds its loaded objects."""
  from pipeline import api  # pylint: disable=import-outside-toplevel
  from runtime import saved_models  # pylint: disable=import-outside-toplevel
  model = tmp_path / "model"
  shutil.copytree(tiny_model_dir, model)
  first = api.embed(["the cat sat"], str(model), seq_length=32)
  loaded = api._load(str(model / "preprocessor"), str(model / "encoder"))  # pylint: disable=protected-access
  refs = [weakref.ref(loaded.encoder.obj), weakref.ref(loaded.preprocessor.obj)]
  del loaded
  api.release_models()
  assert [r() for r in refs] == [None, None]
  assert not saved_models._CACHE  # pylint: disable=protected-access
  np.testing.assert_allclose(api.embed(["the cat sat"], str(model), seq_length=32), first, atol=1e-6)  # loads again
  api.release_models()
