"""Importers turning a model source string into config + canonical weights.

Sources: "hf:DIR" (Hugging Face safetensors), "tf1:DIR" (original TF1 BERT
checkpoint), "random:CONFIG.json" (random weights, needs a vocab file).
"""

from typing import Optional

from modeling.errors import ModelSourceError
from modeling.importers.imported_model import ImportedModel

SCHEMES = ("hf", "tf1", "random")


def load_source(source: str, *, lower_case: Optional[bool] = None,
                vocab: Optional[str] = None, seed: int = 0) -> ImportedModel:
  """Reads a model source.

  Args:
    source: "hf:DIR", "tf1:DIR" or "random:CONFIG.json".
    lower_case: tokenizer casing; None = from the source (see each importer).
    vocab: vocab file; required for "random:", optional override otherwise.
    seed: RNG seed for "random:".

  Raises:
    ModelSourceError: unknown scheme or an unusable source.
  """
  scheme, sep, location = source.partition(":")
  if not sep or scheme not in SCHEMES or not location:
    raise ModelSourceError(
        f"model source {source!r} must look like hf:DIR, tf1:DIR or "
        "random:CONFIG.json")
  # Imported lazily so that each importer's dependencies load only when used.
  # pylint: disable=g-import-not-at-top
  if scheme == "hf":
    from modeling.importers import hf
    return hf.load(location, lower_case=lower_case, vocab=vocab)
  if scheme == "tf1":
    from modeling.importers import tf1
    return tf1.load(location, lower_case=lower_case, vocab=vocab)
  from modeling.importers import random_init
  return random_init.load(location, vocab=vocab, lower_case=lower_case,
                          seed=seed)


__all__ = ["ImportedModel", "load_source", "SCHEMES"]
