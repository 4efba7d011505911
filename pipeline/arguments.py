"""`bert-embed run`'s command line, checked before anything is loaded or deleted; its --help and --version.

Beam's own parser keeps what it knows and only logs `Discarding unparseable args` for the rest, so a misspelt flag
(`--poolng cls`) would silently run the job with the default. Here every argument must be a bert-embed option or a
Beam/Dataflow pipeline option, and options that mean nothing without another one are refused. None of it imports
TensorFlow. Beam takes seconds to import: an argument that is not a bert-embed option is first looked up among the
flags Beam's source defines (so a typo fails fast), and Beam is imported only to parse the arguments as it would.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import functools
import importlib.metadata
import importlib.util
import os
import re
from typing import Optional, Sequence

from pipeline import models
from pipeline.options import BertEmbedArguments, UsageError, split_patterns
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
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # argparse takes these for values, not options


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
  takes_value = {name for action in _parser()._actions if action.nargs is None and action.option_strings  # pylint: disable=protected-access
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


@functools.lru_cache(maxsize=1)
def beam_option_names() -> Optional[frozenset]:
  """The option strings of Beam's pipeline options (all PipelineOptions subclasses Beam defines live in
  apache_beam/options/pipeline_options.py), read from its source without importing Beam; None if unreadable."""
  try:
    spec = importlib.util.find_spec("apache_beam")
    path = os.path.join(list(spec.submodule_search_locations)[0], "options", "pipeline_options.py")
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
  except (AttributeError, ImportError, OSError, SyntaxError, TypeError, ValueError):
    return None
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in (
        "add_argument", "add_value_provider_argument"):
      names.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                   and a.value.startswith("-"))
  return frozenset(names) or None


def _unknown_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(arguments neither bert-embed nor any Beam PipelineOptions subclass knows, every known option string).

  Parsed as Beam parses them (all PipelineOptions subclasses on one parser without abbreviations), so a value
  Beam would reject (`--direct_num_workers=x`) is reported here too.
  """
  from apache_beam.options import pipeline_options  # pylint: disable=import-outside-toplevel
  from pipeline import options  # pylint: disable=import-outside-toplevel
  _ = options.BertEmbedOptions  # registers it among PipelineOptions' subclasses
  beam_parser = getattr(pipeline_options, "_BeamArgumentParser", argparse.ArgumentParser)
  parser = type("_BeamParser", (_Parser, beam_parser), {})(prog=PROG, allow_abbrev=False)
  seen = {}
  for cls in pipeline_options.PipelineOptions.__subclasses__():
    seen.setdefault(str(cls), cls)  # as Beam does: a class defined twice (e.g. re-run main sessions) counts once
  for cls in seen.values():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  _, unknown = parser.parse_known_args(list(argv))
  known = [name for action in parser._actions for name in action.option_strings]  # pylint: disable=protected-access
  return unknown, known


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


def check_repeated(argv: Sequence[str]) -> None:
  """Raises UsageError when a bert-embed option is given twice with different values (`--pooling cls ...
  --pooling mean`: argparse would silently keep the last). The same value twice passes; --input is repeatable."""
  parser = _parser()
  actions = [a for a in parser._actions if a.option_strings and a.dest != argparse.SUPPRESS]  # pylint: disable=protected-access
  namespace = _Assignments({a.dest: a.default for a in actions})
  parser.parse_known_args(list(argv), namespace=namespace)
  for action in actions:
    if isinstance(action, argparse._AppendAction):  # pylint: disable=protected-access
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
    beam_names = beam_option_names()
    if beam_names is not None:  # a flag Beam does not define either: no need to import Beam to say so
      flags = [arg for arg in rest if arg.startswith("-") and arg != "--" and not _NEGATIVE_NUMBER.match(arg)]
      unknown = [arg for arg in flags if arg.split("=", 1)[0] not in beam_names]
      if unknown:
        ours = [name for action in parser._actions for name in action.option_strings]  # pylint: disable=protected-access
        raise UsageError(_unknown_message(unknown, sorted(beam_names) + ours))
    unknown, known = _unknown_arguments(argv)
    if unknown:
      raise UsageError(_unknown_message(unknown, known))
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
  models.check_model_flags(o.model, o.preprocessor, o.encoder)
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


def _check_layers(o) -> None:
  try:
    layers = pooling.parse_layers(o.layers)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if layers and o.pooling == "pooled":
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
