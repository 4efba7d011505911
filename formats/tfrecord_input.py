"""TFRecord input: the record framing (lengths and CRC-32C checksums) and tf.Example records."""
from __future__ import annotations

import io
import struct
from typing import Any, Iterator, NamedTuple, Union

from formats.fields import (FileStats, Invalid, Item, ReadOptions, describe_error, fields_to_item, snippet_of,
                            wanted_fields)
from formats.read_errors import DamagedInput, is_damage
from formats.records import DeadLetter

_SKIP_CHUNK_BYTES = 1 << 16  # the bytes after a broken frame are read this much at a time
_TFRECORD_HEADER = struct.Struct("<QI")  # payload length, masked CRC-32C of the length
_TFRECORD_FOOTER = struct.Struct("<I")  # masked CRC-32C of the payload


_CRC_MASK_DELTA = 0xA282EAD8  # TFRecord stores a CRC rotated right by 15 bits plus this constant


def _masked_crc32c(data: bytes) -> int:
  """The masked CRC-32C (Castagnoli) a TFRecord frame stores for `data`."""
  import google_crc32c  # pylint: disable=import-outside-toplevel  (C implementation; installed with Beam's GCP extra)
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


class _DamagedPayload(NamedTuple):
  """A TFRecord whose framing is intact but whose payload fails its checksum."""
  offset: int  # of the record's header in the (decompressed) file
  payload: bytes


def _skip_rest(stream: io.BufferedIOBase) -> str:
  """Reads the stream to its end; describes how many bytes that was (and why it stopped early, if it did)."""
  skipped = 0
  try:
    while True:
      chunk = stream.read(_SKIP_CHUNK_BYTES)
      if not chunk:
        return f"{skipped} bytes"
      skipped += len(chunk)
  except Exception as error:  # pylint: disable=broad-except
    if not is_damage(error):  # e.g. an I/O error: raised, so that the file is read again
      raise
    return f"at least {skipped} bytes (then {describe_error(error)})"


class TFRecordFrameError(DamagedInput):
  """A TFRecord frame (length, its checksum, or the bytes it promises) is broken: the rest of the file is lost."""


def tfrecord_payloads(stream: io.BufferedIOBase) -> Iterator[Union[bytes, _DamagedPayload]]:
  """Yields each record's payload, or a _DamagedPayload when only the payload's checksum fails.

  A record's frame is a length with its own checksum, so a damaged payload can be stepped over; a broken frame
  (length checksum mismatch, or a file ending inside a record) cannot, and raises TFRecordFrameError saying at
  which byte and how many bytes are lost.
  """
  offset = 0
  while True:
    header = stream.read(_TFRECORD_HEADER.size)
    if not header:
      return
    if len(header) != _TFRECORD_HEADER.size:
      raise TFRecordFrameError(f"the file ends inside a record's header at byte {offset}; "
                               f"skipped its last {len(header)} bytes")
    length, length_crc = _TFRECORD_HEADER.unpack(header)
    if _masked_crc32c(header[:8]) != length_crc:
      raise TFRecordFrameError(f"length checksum mismatch at byte {offset} (not a TFRecord file, or a corrupt one); "
                               f"skipped the rest of the file: {len(header)} + {_skip_rest(stream)}")
    payload = stream.read(length)
    footer = stream.read(_TFRECORD_FOOTER.size) if len(payload) == length else b""
    if len(footer) != _TFRECORD_FOOTER.size:
      raise TFRecordFrameError(f"the file ends inside the record at byte {offset} ({length}-byte payload); "
                               f"skipped its last {len(header) + len(payload) + len(footer)} bytes")
    (payload_crc,) = _TFRECORD_FOOTER.unpack(footer)
    yield payload if _masked_crc32c(payload) == payload_crc else _DamagedPayload(offset, payload)
    offset += len(header) + length + len(footer)


def verified_payloads(stream: io.BufferedIOBase) -> Iterator[bytes]:
  """Yields each record's payload; raises DamagedInput at the first record failing a checksum or a broken frame."""
  for payload in tfrecord_payloads(stream):
    if isinstance(payload, _DamagedPayload):
      raise DamagedInput(f"TFRecord payload checksum mismatch in the record at byte {payload.offset}")
    yield payload


def _feature_value(feature) -> Any:
  """The single value of a tf.train.Feature (bytes, int or float), or Invalid."""
  kind = feature.WhichOneof("kind")
  values = getattr(feature, kind).value if kind else ()
  if len(values) != 1:
    return Invalid(f"has {len(values)} values, expected 1")
  return values[0]


def read_tfrecord(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One record per tf.Example; bytes features are decoded as UTF-8, int64 ids become strings.

  A record failing its payload checksum is a dead letter and reading goes on; a broken frame ends the file (a
  "read" dead letter from read_file saying how many bytes were skipped).
  """
  from google.protobuf.message import DecodeError  # pylint: disable=import-outside-toplevel
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  wanted = wanted_fields(options)
  for index, payload in enumerate(tfrecord_payloads(stream)):
    stats.resume_at = index + 1
    if isinstance(payload, _DamagedPayload):
      yield DeadLetter.make(f"{path}:{index}", path, "read",
                            f"TFRecord payload checksum mismatch in the record at byte {payload.offset} "
                            f"({len(payload.payload)} bytes): the record is corrupt; the records after it are read",
                            snippet_of(payload.payload))
      continue
    example = example_pb2.Example()
    try:
      example.ParseFromString(payload)
    except DecodeError as error:
      yield DeadLetter.make(f"{path}:{index}", path, "parse", f"malformed tf.Example: {error}",
                            snippet_of(payload))
      continue
    features = example.features.feature
    fields = {name: _feature_value(features[name]) for name in wanted if name in features}
    yield fields_to_item(fields, path, index, options, lambda f=fields: f.get(options.text_field))
