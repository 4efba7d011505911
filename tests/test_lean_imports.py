"""What a run's process imports (benchmarks/RESULTS.md, "Start-up (issue 26 item 12)"): TensorFlow's public API
modules are deferred until a name of theirs is looked up (runtime/tf_import.py), and the command line runs without
pandas (runtime/beam_import.py). Each in a fresh interpreter: this one has TensorFlow imported already."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DEFERRED = """
import json, sys, threading
from runtime import tf_import
tf = tf_import.import_tensorflow()
strategy = "tensorflow.python.distribute.collective_all_reduce_strategy"
found = {"deferred_at_import": type(tf.distribute).__name__, "strategy_imported": strategy in sys.modules,
         "compat_in_dir": "compat" in dir(tf)}
from tensorflow.python.distribute import mirrored_strategy
found["mirrored_is_public"] = tf.distribute.MirroredStrategy is mirrored_strategy.MirroredStrategy
sessions, errors = [], []

def look_up():
  try:
    sessions.append(tf.compat.v1.Session)
  except Exception as e:  # pylint: disable=broad-except
    errors.append(repr(e))

threads = [threading.Thread(target=look_up) for _ in range(8)]
for t in threads:
  t.start()
for t in threads:
  t.join()
from tensorflow.python.client import session
found["threads"] = [len(sessions), errors, all(s is session.Session for s in sessions)]
try:
  tf.compat.no_such_name
  found["missing"] = "found"
except AttributeError:
  found["missing"] = "AttributeError"
found["ran"] = type(tf.compat).__name__
found["vector"] = tf.saved_model.load.__module__
print(json.dumps(found))
"""


def test_tensorflows_api_modules_run_at_their_first_lookup_whole_in_every_thread():
  proc = subprocess.run([sys.executable, "-c", _DEFERRED], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
      "deferred_at_import": "_DeferredModule", "strategy_imported": False, "compat_in_dir": True,
      "mirrored_is_public": True, "threads": [8, [], True], "missing": "AttributeError", "ran": "module",
      "vector": "tensorflow.python.saved_model.load"}


_CLI = """
import atexit, json, runpy, sys
from runtime import tf_import

def report():
  print(json.dumps({"pandas": "pandas" in sys.modules, "keras": "keras" in sys.modules,
                    "strategy": "tensorflow.python.distribute.collective_all_reduce_strategy" in sys.modules,
                    "deferred_left": len(tf_import._deferred) > 0}))  # pylint: disable=protected-access

atexit.register(report)
sys.argv = ["bert-embed", "run", *sys.argv[1:]]
runpy.run_module("cli", run_name="__main__")
"""


def test_the_command_line_runs_without_pandas_and_keras_and_imports_no_unused_tensorflow_api(tiny_model_dir,
                                                                                             tmp_path):
  (tmp_path / "in.txt").write_text("".join(f"line {i} of three\n" for i in range(3)), encoding="utf-8")
  args = ["--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out" / "emb"),
          "--seq-length", "32", "--quiet"]
  # The first run of a model inspects it (a cold inspection looks up more of the API: tf.train); the second is warm.
  first = subprocess.run([sys.executable, "-m", "cli", "run", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
  assert first.returncode == 0, first.stderr[-3000:]
  proc = subprocess.run([sys.executable, "-c", _CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"pandas": False, "keras": False, "strategy": False,
                                                               "deferred_left": True}
  manifest = json.loads((tmp_path / "out" / "emb-manifest.json").read_text(encoding="utf-8"))
  assert sum(pq.ParquetFile(f).metadata.num_rows for f in manifest["output_files"]) == 3
