"""Resolving --model / --preprocessor / --encoder to the paths of two SavedModels, checked to exist."""
from __future__ import annotations

from typing import NamedTuple, Optional

from models.hf_models import resolve_path
from formats.usage import UsageError


class ModelSpec(NamedTuple):
  preprocessor: str
  encoder: str
  name: str
  staged_from: Optional[str] = None  # the model flags' value when a launcher-side model was staged (models/remote.py)


# Beam's FileSystems for every path (gs://, s3://, local, ...), imported on first use: check_model_flags runs
# before Beam is imported (pipeline/arguments.py).
def _filesystems():
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  return FileSystems


def _join(path: str, name: str) -> str:
  return _filesystems().join(path.rstrip("/") or path, name)


def check_model_flags(model: Optional[str], preprocessor: Optional[str], encoder: Optional[str]) -> None:
  """Raises UsageError, saying what to give, unless the flags name exactly one model (nothing is loaded)."""
  if model and (preprocessor or encoder):
    raise UsageError("give either --model or --preprocessor with --encoder, not both")
  if not model and not (preprocessor and encoder):
    if preprocessor or encoder:
      raise UsageError("--preprocessor and --encoder go together: give both")
    raise UsageError("no model given. Use --model default (the bundled offline MiniLM model), --model DIR (a dir "
                     "written by `bert-embed export`), or --preprocessor P --encoder E (TF Hub BERT SavedModels)")


def resolve_model(model: Optional[str], preprocessor: Optional[str], encoder: Optional[str]) -> ModelSpec:
  """Turns the model flags into a ModelSpec; raises UsageError with what to do when they are missing or wrong."""
  check_model_flags(model, preprocessor, encoder)
  if model == "default":
    from models.default_model import (  # pylint: disable=import-outside-toplevel
        DefaultModelUnavailable, ensure_default_model)
    try:
      model = ensure_default_model()
    except DefaultModelUnavailable as e:
      raise UsageError(str(e)) from None
  if model:
    root = resolve_path(model)
    spec = ModelSpec(_join(root, "preprocessor"), _join(root, "encoder"), root.rstrip("/").split("/")[-1])
  else:
    spec = ModelSpec(resolve_path(preprocessor), resolve_path(encoder), encoder.rstrip("/").split("/")[-1])
  for role, path in (("preprocessor", spec.preprocessor), ("encoder", spec.encoder)):
    if not _filesystems().exists(_join(path, "saved_model.pb")):
      raise UsageError(f"the {role} SavedModel {path} does not exist or has no saved_model.pb")
  return spec
