"""Model references of the form `hf:OWNER/REPO`: downloaded from the Hugging Face Hub to its local snapshot cache."""
from __future__ import annotations

from formats.usage import UsageError

HF_PREFIX = "hf:"


def hf_snapshot(ref: str) -> str:
  """The local directory of the Hub snapshot that `ref` names; raises UsageError saying what to do when unavailable."""
  repo = ref[len(HF_PREFIX):]
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UsageError(f"{ref}: resolving hf: models needs `pip install huggingface_hub`") from None
  try:
    return snapshot_download(repo_id=repo)
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f"{ref}: could not download from the Hugging Face Hub ({type(e).__name__}: {e}). "
                     "Offline, download the SavedModel elsewhere and pass its directory.") from None


def resolve_path(ref: str) -> str:
  """`ref` itself, or the local snapshot directory when it is an `hf:` reference."""
  return hf_snapshot(ref) if ref.startswith(HF_PREFIX) else ref
