"""Every flag of `bert-embed run`, defined once, typed, and validated before the job starts."""
from __future__ import annotations

import argparse

from formats.compact import DTYPES as OUTPUT_DTYPES
from formats.fields import INPUT_FORMATS
from formats.output_files import OUTPUT_FORMATS
from runtime.defaults import (DEFAULT_BATCH_SIZE, DEFAULT_BUCKET_SPEC, DEFAULT_DRIFT_SAMPLE,
                                 DEFAULT_DUPLICATE_ID_POLICY, DEFAULT_MAX_BATCH_TOKENS,
                                 DEFAULT_MAX_DEAD_LETTER_FRACTION, DEFAULT_MLM_MAX_TOKENS,
                                 DEFAULT_PREPROCESS_BATCH_SIZE, DEFAULT_SEQ_LENGTH, DUPLICATE_ID_POLICIES)
from runtime.pooling import POOLINGS
from runtime.precision import PRECISIONS
from stores import STORE_KINDS
from stores.base import DEFAULT_BATCH_SIZE as DEFAULT_STORE_BATCH_SIZE
from stores.base import DEFAULT_RETRIES as DEFAULT_STORE_RETRIES

DEFAULT_MAX_TEXT_BYTES = 1 << 20


def parse_bool(value) -> bool:
  """Accepts the bare flag (True) and `=true|false|1|0|yes|no` (Flex Templates pass `--name=value`)."""
  if isinstance(value, bool):
    return value
  v = str(value).strip().lower()
  if v in ("true", "1", "yes", "y", "on"):
    return True
  if v in ("false", "0", "no", "n", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def positive_int(value) -> int:
  n = int(value)
  if n <= 0:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
  return n


def non_negative_int(value) -> int:
  n = int(value)
  if n < 0:
    raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
  return n


def fraction(value) -> float:
  f = float(value)
  if not 0.0 <= f <= 1.0:  # also refuses nan
    raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}")
  return f


def _flag(parser, name: str, **kwargs):
  """Adds --name-with-dashes and its --name_with_underscores spelling (Flex Template parameter names)."""
  dashed = "--" + name.replace("_", "-")
  names = [dashed] if "_" not in name else [dashed, "--" + name]
  parser.add_argument(*names, dest=name, **kwargs)


def _bool_flag(parser, name: str, default, help_text: str):
  _flag(parser, name, type=parse_bool, nargs="?", const=True, default=default, metavar="true|false",
        help=help_text)


class BertEmbedArguments:
  """The embedding job's flags, added to an argparse parser without importing Beam (see BertEmbedOptions)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    g = parser.add_argument_group("bert-embed")
    # Input.
    _flag(g, "input", action="append", default=None,
          help="Input file pattern(s): local or gs:// globs; repeat the flag or separate with commas. .gz is read.")
    _flag(g, "input_format", choices=INPUT_FORMATS, default="text",
          help="text: one record per line (id <file>:<line>); jsonl/csv/parquet/tfrecord: records with fields.")
    _flag(g, "id_field", default="id", help="Record id field (string or integer) for structured formats.")
    _flag(g, "text_field", default="text", help="Text field for structured formats.")
    _flag(g, "text_pair_field", default=None, help="Optional second-segment field: the record is a text pair.")
    _flag(g, "max_text_bytes", type=positive_int, default=DEFAULT_MAX_TEXT_BYTES,
          help="Cut texts longer than this many UTF-8 bytes before tokenizing (marks them truncated).")
    _flag(g, "limit", type=positive_int, default=None, help="Embed only the N records with the smallest ids.")
    _flag(g, "on_duplicate_id", choices=DUPLICATE_ID_POLICIES, default=DEFAULT_DUPLICATE_ID_POLICY,
          help="Records sharing an id: dead-letter (keep the one with the smallest (file, position), dead-letter "
               "the others), fail (stop the job), or keep (embed them all).")
    # Model.
    _flag(g, "model", default=None,
          help="'default' (the bundled offline MiniLM), a dir from `bert-embed export` (preprocessor/ + encoder/), "
               "or hf:ORG/NAME.")
    _flag(g, "preprocessor", default=None, help="TF Hub BERT preprocessor SavedModel (dir, gs:// or hf:ORG/NAME).")
    _flag(g, "encoder", default=None, help="TF Hub BERT encoder SavedModel (dir, gs:// or hf:ORG/NAME).")
    _flag(g, "seq_length", type=positive_int, default=DEFAULT_SEQ_LENGTH,
          help="Packed sequence length ([CLS]/[SEP] included).")
    _flag(g, "pooling", choices=POOLINGS, default=None,
          help="pooled | cls | mean. Default: the model's recommended pooling from its export metadata, else pooled.")
    _bool_flag(g, "normalize", None, "L2-normalise vectors (default: the model's recommendation, with any pooling).")
    _flag(g, "layers", default=None,
          help="Comma-separated encoder layers (negative from the end) averaged before cls/mean pooling.")
    _flag(g, "precision", choices=PRECISIONS, default="fp32",
          help="Compute precision of the encoder's matrix products: fp32 (exact), bf16 (CPUs with AMX or "
               "AVX512_BF16), fp16 (GPUs), or auto (each worker picks the fastest within cosine 0.999 of fp32). "
               "The manifest's precision_used counts the records encoded in each.")
    # Output.
    _flag(g, "output", default=None, help="Output prefix: PREFIX-SSSSS-of-NNNNN.<format>, PREFIX-manifest.json, "
                                          "PREFIX-errors-*.jsonl.")
    g.add_argument("--format", "--output-format", "--output_format", dest="output_format", choices=OUTPUT_FORMATS,
                   default="parquet", help="parquet | tfrecord")
    _flag(g, "num_shards", type=non_negative_int, default=0, help="Output shards (0: the runner chooses).")
    _flag(g, "max_dead_letter_fraction", type=fraction, default=DEFAULT_MAX_DEAD_LETTER_FRACTION,
          help="Fail the run, keeping the earlier output and LATEST, when more than this fraction of the records "
               "read is dead-lettered (1 turns the check off).")
    _bool_flag(g, "keep_text", False, "Also write the text.")
    _bool_flag(g, "emit_tokens", False, "Also write token ids and the token-level sequence_output of real tokens.")
    _flag(g, "output_dtype", choices=OUTPUT_DTYPES, default="float32",
          help="How the embedding is stored: float32, float16, int8 (per-dimension ranges calibrated on the run's "
               "vectors, recorded in the manifest) or binary (sign bits packed 8 per byte).")
    _flag(g, "truncate_dim", type=positive_int, default=None,
          help="Keep the first N dimensions of each vector (Matryoshka-style), renormalised with --normalize.")
    # Long texts.
    _flag(g, "long_text", choices=("truncate", "chunk"), default="truncate",
          help="truncate: keep the first seq_length tokens; chunk: split into overlapping windows.")
    _flag(g, "chunk_stride", type=non_negative_int, default=None,
          help="With --long-text chunk: wordpieces shared by consecutive windows (default: a quarter of a window).")
    _flag(g, "chunk_output", choices=("rows", "mean"), default=None,  # None: not given (rows)
          help="With --long-text chunk: a row per window (id <id>#<k>) or the piece-weighted mean per record "
               "(default: rows).")
    # MLM scores.
    _bool_flag(g, "mlm_scores", False, "Also write pseudo-log-likelihood scores (needs an encoder with .mlm).")
    _bool_flag(g, "mlm_per_token", False, "With --mlm-scores, also write each packed token's score.")
    _bool_flag(g, "mlm_whole_word", False,
               "With --mlm-scores, mask the later pieces of a word too when scoring a piece (PLL-word-l2r).")
    _flag(g, "mlm_max_tokens", type=positive_int, default=DEFAULT_MLM_MAX_TOKENS,
          help="Padded tokens per .mlm call (masked copies of many records are batched under this budget).")
    _bool_flag(g, "no_embeddings", False, "Write MLM scores only, no vectors (needs --mlm-scores).")
    _bool_flag(g, "dedupe_texts", False,
               "Encode records with identical text (and pair) once and fan the vector out to every id.")
    # Incremental runs.
    _flag(g, "previous", default=None,
          help="An earlier run's output prefix, or latest:ROOT (the run ROOT/LATEST points at; successful runs "
               "update it last). Records with the same id and text, embedded with the same model fingerprint and "
               "options, are copied from it instead of encoded; any fingerprint change re-embeds everything.")
    _bool_flag(g, "no_resume", False,
               "Encode every record the previous output does not give, without taking any from the checkpoints of "
               "killed or failed runs (by default a rerun resumes from them).")
    _flag(g, "drift_sample", type=non_negative_int, default=DEFAULT_DRIFT_SAMPLE,
          help="When the fingerprint changed since --previous: compare old and new vectors of this many records "
               "(cosine, in the manifest's drift). 0 turns the check off.")
    # Vector store.
    _flag(g, "vector_store", choices=STORE_KINDS, default=None,
          help="Also keep a vector store equal to the output: qdrant (a server, or a local folder with Qdrant's "
               "embedded engine) or postgres (pgvector). With --previous only new, changed and deleted records "
               "are written; a fingerprint change rebuilds the collection and swaps it in at the end.")
    _flag(g, "vector_store_url", default=None,
          help="qdrant: http(s)://host:6333 (API key from $QDRANT_API_KEY) or a local folder; postgres: "
               "postgresql://user@host:port/db (password from $PGPASSWORD or a service file, never in the URL).")
    _flag(g, "vector_collection", default=None,
          help="The name readers query: a Qdrant alias (over collections NAME__TAG) or a PostgreSQL table.")
    _flag(g, "vector_store_batch_size", type=positive_int, default=None,
          help=f"Points per upsert or delete request (default {DEFAULT_STORE_BATCH_SIZE}).")
    _flag(g, "vector_store_retries", type=non_negative_int, default=None,
          help="Retries of a store request that failed transiently (connection, 5xx, rate limit), with backoff "
               f"(default {DEFAULT_STORE_RETRIES}).")
    _flag(g, "vector_store_index", choices=("hnsw",), default=None,
          help="postgres: keep an HNSW index (cosine) on the table; a rebuild builds it after the bulk load. "
               "Indexes added by hand are rebuilt the same way.")
    _flag(g, "vector_store_verify", default=None,
          help="After applying, the ids and text_sha256 of every point are checked against the output, and the "
               "vectors of this many random rows (within 1e-5), or of all (default 1000); what differs is "
               "repaired.")
    # Batching.
    _flag(g, "batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE,
          help="Largest encoder batch (RunInference max_batch_size).")
    _flag(g, "min_batch_size", type=positive_int, default=1,
          help="Smallest encoder batch (RunInference min_batch_size); needs --bucket-lengths none, as length "
               "buckets size their batches by --max-batch-tokens.")
    _flag(g, "preprocess_batch_size", type=positive_int, default=DEFAULT_PREPROCESS_BATCH_SIZE,
          help="Texts tokenized per call.")
    _flag(g, "bucket_lengths", default=DEFAULT_BUCKET_SPEC,
          help="Comma-separated padded lengths or ranges (a-b: every length; a-b/s: every s-th): an encoder batch "
               "is padded to the smallest of them that holds its longest record (lengths above --seq-length are "
               "dropped; --seq-length is always the last bucket). 'none' pads each batch to its longest record "
               "instead.")
    _flag(g, "max_batch_tokens", type=positive_int, default=DEFAULT_MAX_BATCH_TOKENS,
          help="Padded tokens per encoder batch (rows x bucket length), capped by --batch-size rows.")
    _bool_flag(g, "quiet", False, "No progress lines on stderr while the job runs.")
    _bool_flag(g, "verbose", False, "Show TensorFlow's and Beam's start-up messages (CUDA probing, absl notices).")


def _beam_options_class() -> type:
  """BertEmbedOptions, defined on first use: Beam's PipelineOptions costs seconds to import."""
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel

  class BertEmbedOptions(BertEmbedArguments, PipelineOptions):
    """Options of the embedding job (`options.view_as(BertEmbedOptions)`); Beam's own options pass through."""

  BertEmbedOptions.__qualname__ = "BertEmbedOptions"  # pickled by reference as pipeline.options.BertEmbedOptions
  return BertEmbedOptions


def __getattr__(name: str):
  """`pipeline.options.BertEmbedOptions` is created on first access, once (PEP 562)."""
  if name == "BertEmbedOptions":
    globals()[name] = _beam_options_class()
    return globals()[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
