"""An export's metadata file, read without TensorFlow: a job's launcher reads it for every run (the encoder's
recommended pooling, its max positions), and importing modeling.export would import the model code with it."""
from __future__ import annotations

import json
from typing import Optional

METADATA_FILENAME = "bert_embed_export.json"
PREPROCESSOR_SUBDIR = "preprocessor"
ENCODER_SUBDIR = "encoder"


def read_export_metadata(saved_model_dir: str) -> Optional[dict]:
  """Reads `<saved_model_dir>/assets/bert_embed_export.json`.

  Also accepts an export root (the directory holding `encoder/` and
  `preprocessor/`), reading the encoder's copy.

  Returns:
    The metadata dict, or None when the SavedModel has none (e.g. a real TF
    Hub model).
  """
  saved_model_dir = saved_model_dir.rstrip("/") or saved_model_dir
  # Beam's FileSystems, not tf.io.gfile: a job reads this on the launcher for
  # any Beam filesystem (gs://, s3://, ...), and FileSystems honours what
  # configures them (e.g. a GCS emulator's STORAGE_EMULATOR_HOST).
  # pylint: disable=import-outside-toplevel
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems
  for parts in (("assets", METADATA_FILENAME),
                (ENCODER_SUBDIR, "assets", METADATA_FILENAME)):
    candidate = FileSystems.join(saved_model_dir, *parts)
    if FileSystems.exists(candidate):
      with FileSystems.open(
          candidate, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read().decode("utf-8"))
  return None
