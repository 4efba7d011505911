"""The `bert-embed` command: `run` (the embedding job) and `export` (models to TF Hub form)."""
from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import re
import signal
import sys
import threading
from typing import Iterator, NoReturn, Optional

from pipeline.options import UsageError

USAGE = """usage: bert-embed {run,export} ... | bert-embed --version

  bert-embed run --input GLOB --output PREFIX --model default|DIR [options] [Beam pipeline options]
  bert-embed export --from hf:DIR|tf1:DIR|random:CONFIG.json --output DIR [--seq-length 128] [--lower-case|--cased]

`bert-embed run --help` lists the job's options."""
INTERRUPTED = ("interrupted before the job finished; an output without its manifest is incomplete, and a rerun "
               "replaces it")
# Beam's note of the step that raised, appended to a DoFn's exception message.
_BEAM_STEP_NOTE = re.compile(r"\s*\[while running '[^']*'\]")


def export_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="bert-embed export",
                                   description="Write DIR/preprocessor and DIR/encoder as TF Hub BERT SavedModels.")
  parser.add_argument("--from", dest="source", required=True,
                      help="hf:DIR (Hugging Face BERT checkpoint), tf1:DIR (Google BERT release) or random:CONFIG.json")
  parser.add_argument("--output", required=True)
  parser.add_argument("--seq-length", type=int, default=128)
  case = parser.add_mutually_exclusive_group()
  case.add_argument("--lower-case", dest="lower_case", action="store_const", const=True, default=None)
  case.add_argument("--cased", dest="lower_case", action="store_const", const=False)
  parser.add_argument("--vocab", default=None, help="vocab.txt (random: sources)")
  parser.add_argument("--seed", type=int, default=0, help="random: sources")
  return parser


def _export(argv: list[str]) -> int:
  args = export_parser().parse_args(argv)
  from modeling.errors import ModelSourceError  # pylint: disable=import-outside-toplevel
  from modeling.export import export_model  # pylint: disable=import-outside-toplevel
  try:
    metadata = export_model(args.source, args.output, seq_length=args.seq_length, lower_case=args.lower_case,
                            vocab=args.vocab, seed=args.seed)
  except ModelSourceError as e:
    print(f"bert-embed export: error: {e}", file=sys.stderr)
    return 2
  print(f"exported {args.source} to {args.output}/preprocessor and {args.output}/encoder "
        f"(hidden {metadata['config']['hidden_size']}, {metadata['config']['num_hidden_layers']} layers, "
        f"MLM head: {metadata['has_mlm']}, recommended pooling: {metadata['recommended_pooling']})")
  return 0


def _pop_int_flag(argv: list[str], name: str) -> tuple[list[str], int]:
  """Removes a CLI-only `--name N` / `--name=N` from argv (not a pipeline option)."""
  rest, value, i = [], 0, 0
  while i < len(argv):
    if argv[i] == name or argv[i].startswith(name + "="):
      if argv[i] == name:
        text, i = (argv[i + 1] if i + 1 < len(argv) else ""), i + 2
      else:
        text, i = argv[i][len(name) + 1:], i + 1
      try:
        value = int(text)
      except ValueError:
        raise UsageError(f"argument {name}: expected an integer, got {text!r}") from None
    else:
      rest.append(argv[i])
      i += 1
  return rest, value


def one_line(message: str) -> str:
  """An error message on one line (messages quoting TensorFlow or Beam errors may span several)."""
  return " ".join(_BEAM_STEP_NOTE.sub("", str(message)).split())


class _DropLogsOf(logging.Filter):
  """Drops log records carrying an exception of the given types (Beam logs a DoFn's exception before re-raising)."""

  def __init__(self, *types: type):
    super().__init__()
    self._types = types

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else record.msg
    return not isinstance(exc, self._types)


@contextlib.contextmanager
def _quiet_beam_about(*types: type) -> Iterator[None]:
  """While the job runs, Beam does not log (with a traceback) the exceptions the command reports in one line.

  Only the in-process runner's log is filtered (where a DoFn's exception is logged, then re-raised to the caller);
  the exceptions still end the job.
  """
  logger, drop = logging.getLogger("apache_beam.runners.common"), _DropLogsOf(*types)
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


@contextlib.contextmanager
def _interrupts_noted() -> Iterator[threading.Event]:
  """While the job runs, Ctrl-C (SIGINT) sets the yielded event, then raises KeyboardInterrupt as usual. Beam
  turns a KeyboardInterrupt raised inside a step into a RuntimeError: the event tells an interrupted job from a
  failed one. Only the main thread receives signals; elsewhere the event stays unset."""
  interrupted = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield interrupted
    return

  def on_sigint(signum, frame):
    interrupted.set()
    signal.default_int_handler(signum, frame)

  previous = signal.signal(signal.SIGINT, on_sigint)
  try:
    yield interrupted
  finally:
    signal.signal(signal.SIGINT, previous)


def _run(argv: list[str]) -> int:
  """`bert-embed run`: --help, --version and argument errors answer without loading TensorFlow."""
  from pipeline import arguments  # pylint: disable=import-outside-toplevel
  if "-h" in argv or "--help" in argv:
    print(arguments.help_text())
    return 0
  if "--version" in argv:
    print(arguments.version_text())
    return 0
  with _interrupts_noted() as interrupted:
    try:
      argv, neighbours = _pop_int_flag(argv, "--show-neighbours")
      argv = arguments.join_negative_values(argv)
      arguments.check(argv)
      from pipeline.progress import process_start  # pylint: disable=import-outside-toplevel
      from pipeline.run import run  # pylint: disable=import-outside-toplevel
      from transforms.duplicate_ids import DuplicateIdError  # pylint: disable=import-outside-toplevel
      try:
        with _quiet_beam_about(DuplicateIdError, KeyboardInterrupt):
          outcome = run(argv, started_at=process_start())  # the summary's wall time counts the imports
      except DuplicateIdError as e:  # a property of the data, not a bug: no traceback
        print(f"bert-embed run: error: {one_line(str(e).strip().splitlines()[0])}", file=sys.stderr)
        return 1
    except UsageError as e:
      print(f"bert-embed run: error: {one_line(e)}", file=sys.stderr)
      return 2
    except BaseException:  # pylint: disable=broad-except
      if not interrupted.is_set():
        raise
      print(f"bert-embed run: {INTERRUPTED}", file=sys.stderr)  # one line, not Beam's and TensorFlow's stacks
      return 130
  if neighbours and outcome.manifest and outcome.config.output_format == "parquet":
    from pipeline.neighbours import report  # pylint: disable=import-outside-toplevel
    print(report(outcome.manifest["output_files"], neighbours))
  return 0


def main(argv: Optional[list[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides the job's own output
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE)
    return 0 if argv else 2
  if argv[0] == "--version":
    from pipeline.arguments import version_text  # pylint: disable=import-outside-toplevel
    print(version_text())
    return 0
  command, rest = argv[0], argv[1:]
  if command == "run":
    return _run(rest)
  if command == "export":
    return _export(rest)
  print(f"bert-embed: unknown command {command!r}\n{USAGE}", file=sys.stderr)
  return 2


def finish(code: int) -> NoReturn:
  """Ends the process with `code`, without the interpreter's teardown once TensorFlow is loaded.

  After a job, when every file is closed, that teardown (module and C++ static destructors) took ~1.4 s of a
  one-line job here. The exit handlers registered with atexit still run first (logging, multiprocessing,
  temporary files), then the standard streams are flushed and the process ends.
  """
  if "tensorflow" not in sys.modules:
    sys.exit(code)
  try:
    atexit._run_exitfuncs()  # pylint: disable=protected-access
  finally:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except (OSError, ValueError):  # a closed pipe: nothing more can be said
        pass
    os._exit(code)  # pylint: disable=protected-access


def entry() -> NoReturn:
  """The `bert-embed` console script."""
  finish(main())


if __name__ == "__main__":
  entry()
