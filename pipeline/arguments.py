"""`bert-embed run`'s command line, checked before anything is loaded or deleted; its --help and --version.

Beam's own parser keeps what it knows and only logs `Discarding unparseable args` for the rest, so a misspelt flag
(`--poolng cls`) would silently run the job with the default. Here every argument must be a bert-embed option or a
pipeline option of a `PipelineOptions` subclass Beam has registered (Beam's own, those of the runner `--runner`
names, any the user's code defines), and options that mean nothing without another one are refused. None of it
imports TensorFlow. Arguments that are all bert-embed options are checked without importing Beam (which takes
seconds); any other argument is parsed by the parser Beam builds for `PipelineOptions.get_all_options`.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.metadata
import re
from typing import Optional, Sequence

from models import model_flags
from pipeline.options import BertEmbedArguments
from formats.usage import UsageError, split_patterns
from runtime import text_windows, pooling
from runtime.defaults import DEFAULT_BUCKET_SPEC

PROG = "bert-embed run"
# The stack a release is measured and pinned on (setup.py), reported by --version.
STACK = ("apache-beam", "tensorflow", "tensorflow-text", "tfx-bsl", "pyarrow")
_EPILOG = ("Beam and Dataflow pipeline options (--runner, --project, --region, --temp_location, --machine_type, "
           "--max_num_workers, --experiments, --sdk_container_image, --direct_num_workers, ...) are accepted too; "
           "any other argument is an error.")
_USAGE = f"{PROG} --input GLOB --output PREFIX --model default|DIR [options] [Beam pipeline options]"
_STATES_DEFAULT = re.compile(r"\bdefault\s*:", re.IGNORECASE)
_NEGATIVE_VALUE = re.compile(r"^-\d")


class _Parser(argparse.ArgumentParser):
  """Raises UsageError (one line) instead of printing the usage and exiting."""

  def error(self, message: str):
    raise UsageError(message)


class _HelpFormatter(argparse.HelpFormatter):
  """Appends each option's default, unless its help already says what the default is."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if _STATES_DEFAULT.search(text) or action.nargs == 0 or not action.option_strings:
      return text
    default = action.default
    shown = "not set" if default is None else str(default).lower() if isinstance(default, bool) else "%(default)s"
    return f"{text} (default: {shown})"


def _parser(parser_class: type = _Parser, **kwargs) -> argparse.ArgumentParser:
  parser = parser_class(prog=PROG, allow_abbrev=False, **kwargs)
  BertEmbedArguments._add_argparse_args(parser)  # pylint: disable=protected-access
  return parser


def help_text() -> str:
  parser = _parser(formatter_class=_HelpFormatter, epilog=_EPILOG, usage=_USAGE)
  cli = parser.add_argument_group("command line only")
  cli.add_argument("--show-neighbours", type=int, metavar="N", default=0,
                   help="After the job, print the nearest neighbour of N records (Parquet output); 0: none.")
  cli.add_argument("--version", action="store_true", help="Print the versions of bert-embed and its stack.")
  return parser.format_help()


def version_text() -> str:
  """bert-embed's version and the installed versions of the pinned stack (package metadata only: no imports)."""

  def version(name: str) -> str:
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      return "not installed"

  return f"bert-embed {version('bert-embed')} ({', '.join(f'{n} {version(n)}' for n in STACK)})"


def join_negative_values(argv: Sequence[str]) -> list[str]:
  """`--layers -1,-2` -> `--layers=-1,-2`: argparse takes a value starting with '-' for an option of its own."""
  parser_actions = _parser()._actions  # pylint: disable=protected-access
  takes_value = {name for action in parser_actions if action.nargs is None and action.option_strings
                 for name in action.option_strings}
  out, i = [], 0
  while i < len(argv):
    if argv[i] in takes_value and i + 1 < len(argv) and _NEGATIVE_VALUE.match(argv[i + 1]):
      out.append(f"{argv[i]}={argv[i + 1]}")
      i += 2
    else:
      out.append(argv[i])
      i += 1
  return out


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
  """Every option string `parser` knows (argparse keeps its actions in `_actions`: it has no public listing)."""
  return [name for action in parser._actions for name in action.option_strings]  # pylint: disable=protected-access


def runner_module(runner: Optional[str]) -> Optional[str]:
  """The module defining the runner `--runner` names, found as Beam finds it: a short name among
  `StandardOptions.ALL_KNOWN_RUNNERS` (with or without `Runner`, any case), else a dotted `module.Class` path;
  None for a short name Beam does not know (Beam refuses it when the pipeline is built)."""
  from apache_beam.options.pipeline_options import StandardOptions  # pylint: disable=import-outside-toplevel
  name = runner or "DirectRunner"
  by_name = {path.rsplit(".", 1)[-1].lower(): path for path in StandardOptions.ALL_KNOWN_RUNNERS}
  path = by_name.get(name.lower(), by_name.get(name.lower() + "runner", name))
  return path.rsplit(".", 1)[0] if "." in path else None


def _runner_flag(argv: Sequence[str]) -> Optional[str]:
  parser = _Parser(prog=PROG, allow_abbrev=False, add_help=False)
  parser.add_argument("--runner")
  return parser.parse_known_args(list(argv))[0].runner


def import_runner(runner: Optional[str]) -> None:
  """Imports the module of the runner `--runner` names, so that the options classes it defines are registered.

  Raises UsageError when it cannot be imported (Beam could not create the runner either).
  """
  module = runner_module(runner)
  if module is None:
    return
  try:
    importlib.import_module(module)
  except ImportError as e:
    raise UsageError(f"--runner {runner}: cannot import {module} ({type(e).__name__}: {e})") from None


def _raise_usage_error(message: str):
  raise UsageError(message)


def check_with_beam(argv: Sequence[str]) -> list[str]:
  """Parses `argv` with every registered PipelineOptions subclass's options, as Beam will (one parser, no
  abbreviations, a class defined twice counted once); returns every option string that parser knows.

  Raises UsageError naming the arguments none of them knows, each with its closest known spelling, or the first
  value Beam would reject (`--direct_num_workers=x`).
  """
  import_runner(_runner_flag(argv))
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  from pipeline import options  # pylint: disable=import-outside-toplevel
  _ = options.BertEmbedOptions  # registers it among PipelineOptions' subclasses
  known = []

  def check_on(parser: argparse.ArgumentParser) -> None:
    """Called by get_all_options with its parser, all subclasses' options added, before it parses."""
    parser.error = _raise_usage_error  # argparse reports through error(): a UsageError, not a usage and exit
    known.extend(option_strings(parser))
    _, unknown = parser.parse_known_args(list(argv))
    if unknown:
      raise UsageError(_unknown_message(unknown, known))
    check_repeated(argv, parser)

  PipelineOptions(list(argv)).get_all_options(add_extra_args_fn=check_on)
  return known


def _unknown_message(unknown: Sequence[str], known: Sequence[str]) -> str:
  flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-") and arg != "--"]
  if not flags:
    return (f"unexpected argument {unknown[0]!r} (options are --name value or --name=value; "
            f"`{PROG} --help` lists them)")
  described = []
  for flag in dict.fromkeys(flags):
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    described.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
  noun = "option" if len(described) == 1 else "options"
  return f"unknown {noun} {', '.join(described)}; `{PROG} --help` lists the options"


class _Assignments(argparse.Namespace):
  """A namespace that remembers every value argparse assigns to each option (defaults are not assignments)."""

  def __init__(self, defaults: dict):
    object.__setattr__(self, "assigned", {})
    super().__init__(**defaults)
    self.assigned.clear()

  def __setattr__(self, name: str, value) -> None:
    self.assigned.setdefault(name, []).append(value)
    super().__setattr__(name, value)


# Beam's options whose repeats replace each other; its other actions (append, dict union) collect their repeats.
_REPLACING_ACTIONS = (argparse._StoreAction, argparse._StoreConstAction)  # pylint: disable=protected-access


def check_repeated(argv: Sequence[str], parser: Optional[argparse.ArgumentParser] = None) -> None:
  """Raises UsageError when an option is given twice with different values (`--pooling cls ... --pooling mean`:
  argparse would silently keep the last). The same value twice passes; --input is repeatable. `parser`: Beam's,
  with every registered options class (then only options whose repeats replace each other are checked); by
  default bert-embed's own."""
  own = parser is None
  parser = _parser() if own else parser
  parser_actions = parser._actions  # pylint: disable=protected-access
  actions = [a for a in parser_actions if a.option_strings and a.dest != argparse.SUPPRESS]
  namespace = _Assignments({a.dest: a.default for a in actions})
  parser.parse_known_args(list(argv), namespace=namespace)
  for action in actions:
    if isinstance(action, argparse._AppendAction):  # pylint: disable=protected-access
      continue
    if not own and not isinstance(action, _REPLACING_ACTIONS):
      continue
    values = list(dict.fromkeys(repr(v) for v in namespace.assigned.get(action.dest, ())))
    if len(values) > 1:
      raise UsageError(f"{action.option_strings[0]} is given more than once, with different values "
                       f"({', '.join(values)}); give it once")


def check(argv: Sequence[str]) -> argparse.Namespace:
  """Every argument known, every value valid, no conflicting options; returns bert-embed's options.

  Raises UsageError. Expects `join_negative_values` to have been applied.
  """
  parser = _parser()
  namespace, rest = parser.parse_known_args(list(argv))
  check_repeated(argv)
  if rest:
    check_with_beam(argv)
  check_values(namespace)
  return namespace


def _given(value) -> bool:
  return value is not None


def check_values(o) -> None:
  """Checks of bert-embed's option values that need no file, model or Beam; raises UsageError.

  `o` is the parsed namespace or a BertEmbedOptions view (same attribute names).
  """
  if not split_patterns(o.input):
    raise UsageError("--input is required (a file pattern; local or gs:// globs)")
  if not o.output:
    raise UsageError("--output is required (an output prefix, e.g. out/embeddings)")
  model_flags.check_model_flags(o.model, o.preprocessor, o.encoder)
  for flag, value in (("--id-field", o.id_field), ("--text-field", o.text_field),
                      ("--text-pair-field", o.text_pair_field)):
    if value is not None and not str(value).strip():
      raise UsageError(f"{flag} must name a field, got an empty string")
  if _given(o.text_pair_field) and o.input_format == "text":
    raise UsageError("--text-pair-field needs records with fields (--input-format jsonl, csv, parquet or tfrecord); "
                     "text input has one text per line")
  if o.seq_length < 3:
    raise UsageError("--seq-length must be at least 3 ([CLS] text [SEP])")
  if o.min_batch_size > o.batch_size:
    raise UsageError(f"--min-batch-size {o.min_batch_size} is larger than --batch-size {o.batch_size}")
  if o.min_batch_size > 1 and not buckets_off(o.bucket_lengths):
    raise UsageError("--min-batch-size needs --bucket-lengths none (length buckets size their batches by "
                     "--max-batch-tokens)")
  _check_layers(o)
  _check_mlm(o)
  _check_long_text(o)
  _check_buckets(o.bucket_lengths)
  if o.no_embeddings and (o.output_dtype != "float32" or o.truncate_dim is not None):
    raise UsageError("--output-dtype and --truncate-dim shape the vectors, which --no-embeddings does not write")
  _check_vector_store(o)


def _check_vector_store(o) -> None:
  given = [flag for flag, value in (("--vector-store-url", o.vector_store_url),
                                    ("--vector-collection", o.vector_collection),
                                    ("--vector-store-batch-size", o.vector_store_batch_size),
                                    ("--vector-store-retries", o.vector_store_retries),
                                    ("--vector-store-verify", o.vector_store_verify),
                                    ("--vector-store-index", o.vector_store_index)) if _given(value)]
  if not o.vector_store:
    if given:
      raise UsageError(f"{' and '.join(given)} need(s) --vector-store qdrant|postgres")
    return
  missing = [flag for flag in ("--vector-store-url", "--vector-collection") if flag not in given]
  if missing:
    raise UsageError(f"--vector-store {o.vector_store} needs {' and '.join(missing)}")
  if o.no_embeddings:
    raise UsageError("--vector-store needs embeddings; --no-embeddings writes MLM scores only")
  if o.vector_store_index is not None and o.vector_store != "postgres":
    raise UsageError("--vector-store-index is for --vector-store postgres (Qdrant indexes every collection itself)")
  verify = o.vector_store_verify
  if verify is not None and str(verify).lower() != "all" and not str(verify).isdigit():
    raise UsageError(f"--vector-store-verify must be a number of vectors (0 or more) or all, got {verify!r}")
  if o.output_dtype != "float32" or o.truncate_dim is not None:
    raise UsageError("--vector-store writes float32 vectors of the model's dimension: it does not go with "
                     "--output-dtype or --truncate-dim")


def _check_layers(o) -> None:
  try:
    layers = pooling.parse_layers(o.layers)
  except ValueError as e:
    raise UsageError(str(e)) from None
  check_layers_pooling(layers, o.pooling)


def check_layers_pooling(layers: Optional[tuple[int, ...]], pooling: Optional[str]) -> None:
  """--layers pools the named layers' tokens: refused with the pooled output (the flag's or the model's choice)."""
  if layers and pooling == "pooled":
    raise UsageError("--layers needs --pooling cls or mean (pooled_output comes from the last layer's pooler)")


def _check_mlm(o) -> None:
  needs_mlm = [name for name, on in (("--mlm-per-token", o.mlm_per_token), ("--mlm-whole-word", o.mlm_whole_word),
                                     ("--no-embeddings", o.no_embeddings)) if on]
  if needs_mlm and not o.mlm_scores:
    raise UsageError(f"{', '.join(needs_mlm)} need(s) --mlm-scores")


def _check_long_text(o) -> None:
  if o.long_text != "chunk":
    given = [flag for flag, value in (("--chunk-stride", o.chunk_stride), ("--chunk-output", o.chunk_output))
             if _given(value)]
    if given:
      raise UsageError(f"{' and '.join(given)} need(s) --long-text chunk")
    return
  try:
    text_windows.validate(o.long_text, chunk_stride(o), o.seq_length, o.text_pair_field)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if o.mlm_scores:
    raise UsageError("--mlm-scores is not supported with --long-text chunk (a text's windows overlap)")
  if o.chunk_output == "mean" and o.emit_tokens:
    raise UsageError("--emit-tokens needs --chunk-output rows (a mean over windows has no single token sequence)")


def chunk_stride(o) -> int:
  """--chunk-stride, or a quarter of a window's wordpieces."""
  return (o.seq_length - 2) // 4 if o.chunk_stride is None else o.chunk_stride


def buckets_off(value: Optional[str]) -> bool:
  """--bucket-lengths 'none' (or empty, or unset in a programmatic call): no length buckets."""
  return value is None or str(value).strip().lower() in ("", "none")


def _check_buckets(value: Optional[str]) -> None:
  if buckets_off(value) or str(value).strip().lower() == DEFAULT_BUCKET_SPEC:
    return
  from runtime import buckets  # pylint: disable=import-outside-toplevel
  try:
    buckets.parse_bucket_lengths(value)
  except ValueError as e:
    raise UsageError(f"--bucket-lengths: {e}") from None
