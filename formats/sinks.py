"""Beam file sinks for the pipeline's outputs: Parquet, TFRecord and JSON lines.

All files go through Beam's file-based sinks, which write to a temporary directory and rename the finished shards
into place, so a reader never sees a half-written `PREFIX-SSSSS-of-NNNNN.*` file. Every sink returns the
PCollection of its final file names, also for an empty input (Beam then writes one empty shard), so the manifest
step can list them. The sinks delete only the shard names they are about to write and name their scratch
directories after their run's prefix (formats/output_files.py). Parquet pages carry CRC checksums, which a
later `--previous` run verifies before reusing a vector.
"""
from __future__ import annotations

import uuid
from typing import NamedTuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam import coders
from apache_beam.io import filebasedsink, textio, tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import Write

from formats.output_files import ERRORS_SUFFIX, errors_prefix, path_basename, scratch_dir_name

PARQUET_CODEC = "snappy"


class OwnShardsOnly:
  """Mixin for a Beam FileBasedSink: deletes only its own shard names, keeps scratch names unambiguous.

  FileBasedSink.pre_finalize deletes every file matching PREFIX-*-of-NNNNN.ext before the rename, so
  a run with the prefix `emb` would delete the shards of a finished run with the prefix `emb-large`.
  Here only the exact names this sink is about to write are deleted (a stale shard of the same name
  would otherwise confuse the rename's already-renamed check). The subclass sets `_run_prefix` (the
  run's output prefix, also for the dead-letter sink) and `_scratch_kind` (one of SCRATCH_KINDS).
  """

  _run_prefix: str
  _scratch_kind: str

  def _create_temp_dir(self, file_path_prefix):
    base, _ = FileSystems.split(file_path_prefix)
    return FileSystems.join(base, scratch_dir_name(self._run_prefix, self._scratch_kind, uuid.uuid1().hex))

  def pre_finalize(self, init_result, writer_results):
    self._delete_own_shards(len(list(writer_results)), None)

  def pre_finalize_windowed(self, init_result, writer_results, window=None):
    self._delete_own_shards(len(list(writer_results)), window)

  def _delete_own_shards(self, num_shards: int, window) -> None:
    own = {path_basename(self._get_final_name(i, num_shards, window)) for i in range(num_shards)}
    candidates = FileSystems.match([self._get_final_name_glob(num_shards, window)])
    existing = [m.path for result in candidates for m in result.metadata_list if path_basename(m.path) in own]
    if existing:
      FileSystems.delete(existing)


class ParquetShard(NamedTuple):
  handle: object  # the file handle FileBasedSink.open returned
  writer: pq.ParquetWriter


class ParquetSink(OwnShardsOnly, filebasedsink.FileBasedSink):
  """pyarrow.Tables -> PREFIX-SSSSS-of-NNNNN.parquet, one row group per table, with page checksums."""

  def __init__(self, output_prefix: str, schema: pa.Schema, num_shards: int):
    super().__init__(output_prefix, coder=None, file_name_suffix=".parquet", num_shards=num_shards,
                     mime_type="application/x-parquet", compression_type=CompressionTypes.UNCOMPRESSED)
    self._run_prefix = output_prefix
    self._scratch_kind = "embeddings"
    self._schema = schema

  def open(self, temp_path):
    handle = super().open(temp_path)
    return ParquetShard(handle, pq.ParquetWriter(
        handle, self._schema, compression=PARQUET_CODEC, use_compliant_nested_type=True,
        write_page_checksum=True))

  def write_record(self, file_handle, value):
    file_handle.writer.write_table(value)

  def close(self, file_handle):
    file_handle.writer.close()
    file_handle.handle.close()


class TFRecordSink(OwnShardsOnly, tfrecordio._TFRecordSink):  # pylint: disable=protected-access
  """Serialized tf.Examples -> PREFIX-SSSSS-of-NNNNN.tfrecord (each record with its CRCs)."""

  def __init__(self, output_prefix: str, num_shards: int):
    super().__init__(output_prefix, coders.BytesCoder(), ".tfrecord", num_shards, None,
                     CompressionTypes.UNCOMPRESSED, None)
    self._run_prefix = output_prefix
    self._scratch_kind = "embeddings"


class JsonLinesSink(OwnShardsOnly, textio._TextSink):  # pylint: disable=protected-access
  """Dead-letter lines -> PREFIX-errors-SSSSS-of-NNNNN.jsonl."""

  def __init__(self, output_prefix: str, num_shards: int):
    super().__init__(errors_prefix(output_prefix), file_name_suffix=ERRORS_SUFFIX, num_shards=num_shards,
                     compression_type=CompressionTypes.UNCOMPRESSED)
    self._run_prefix = output_prefix
    self._scratch_kind = "errors"


class WriteFiles(beam.PTransform):
  """Writes through one of the sinks above (as Beam's WriteToParquetBatched etc. do: one `Write` step)."""

  def __init__(self, sink: filebasedsink.FileBasedSink):
    super().__init__()
    self._sink = sink

  def expand(self, pcoll):
    return pcoll | Write(self._sink)
