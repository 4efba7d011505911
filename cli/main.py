"""The `bert-embed` command: `run` (the embedding job) and `export` (models to TF Hub form)."""
from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import logging
import os
import re
import signal
import sys
import threading
from typing import Callable, Iterator, NoReturn, Optional

from formats.usage import UsageError

USAGE = """usage: bert-embed {run,export,clean} ... | bert-embed --version

  bert-embed run --input GLOB --output PREFIX --model default|DIR [options] [Beam pipeline options]
  bert-embed export --from hf:DIR|tf1:DIR|random:CONFIG.json --output DIR [--overwrite] [--seq-length 128]
                    [--lower-case|--cased]
  bert-embed clean ROOT_OR_PREFIX [--dry-run]   (what killed or failed runs left: staging, checkpoints)

`bert-embed run --help` lists the job's options."""
INTERRUPTED = ("interrupted before the job finished; the earlier output under the prefix is as it was (rerun the "
               "same command to resume from this run's checkpoints, or remove them with bert-embed clean)")
# Beam's note of the step that raised, appended to a DoFn's exception message.
_BEAM_STEP_NOTE = re.compile(r"\s*\[while running '[^']*'\]")
_BEAM_STEP = re.compile(r"\[while running '([^']*)'\]")
# A full disk or quota, as an OSError's errno or as Beam's text of an OSError it re-raised as another type.
_OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_OUT_OF_SPACE_TEXT = re.compile(r"\[Errno (?:%s)\]|No space left on device|Disk quota exceeded"
                                % "|".join(str(n) for n in _OUT_OF_SPACE_ERRNOS))
# A worker's data error as the multi-process runner (or a remote one) reports it: in the text of another exception.
_WORKER_DATA_ERROR = re.compile(r"^[\w.]*\b(?:DuplicateIdError|RunCheckError|StoreError|SystemicError): (.+)$",
                                re.MULTILINE)


def _export_seq_length(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
  if value < 2:
    raise argparse.ArgumentTypeError(f"must be at least 2 ([CLS] and [SEP]), got {value}")
  return value


class _ExportParser(argparse.ArgumentParser):
  """Reports a bad argument on one line (`bert-embed export --help` shows the usage)."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def export_parser() -> argparse.ArgumentParser:
  parser = _ExportParser(prog="bert-embed export",
                                   description="Write DIR/preprocessor and DIR/encoder as TF Hub BERT SavedModels.")
  parser.add_argument("--from", dest="source", required=True,
                      help="hf:DIR (Hugging Face BERT checkpoint), tf1:DIR (Google BERT release) or random:CONFIG.json")
  parser.add_argument("--output", required=True)
  parser.add_argument("--seq-length", type=_export_seq_length, default=128,
                      help="Packed sequence length of the preprocessor: 2 to the model's max_position_embeddings.")
  parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output folder.")
  case = parser.add_mutually_exclusive_group()
  case.add_argument("--lower-case", dest="lower_case", action="store_const", const=True, default=None)
  case.add_argument("--cased", dest="lower_case", action="store_const", const=False)
  parser.add_argument("--vocab", default=None, help="vocab.txt (random: sources)")
  parser.add_argument("--seed", type=int, default=0, help="random: sources")
  return parser


def _export(argv: list[str]) -> int:
  args = export_parser().parse_args(argv)
  from modeling.errors import ModelSourceError, SeqLengthError  # pylint: disable=import-outside-toplevel
  from modeling.export import export_model  # pylint: disable=import-outside-toplevel
  try:
    metadata = export_model(args.source, args.output, seq_length=args.seq_length, lower_case=args.lower_case,
                            vocab=args.vocab, seed=args.seed, overwrite=args.overwrite)
  except FileExistsError:
    print(f"bert-embed export: error: --output {args.output} exists and is not an empty folder; pass --overwrite "
          "to replace it, or choose a new folder", file=sys.stderr)
    return 2
  except SeqLengthError as e:
    print(f"bert-embed export: error: --seq-length {e.seq_length} is out of range: the model has {e.max_length} "
          f"positions (max_position_embeddings), so use 2 to {e.max_length}", file=sys.stderr)
    return 2
  except ModelSourceError as e:
    print(f"bert-embed export: error: {one_line(e)}", file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    if not out_of_space(e):
      raise
    print(f"bert-embed export: error: {out_of_space_message(e, args.output)}", file=sys.stderr)
    return 1
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


def out_of_space(error: BaseException) -> bool:
  """True when `error`, or an exception it was raised from or while handling, is a full disk or quota.

  Beam re-raises a step's OSError as a RuntimeError quoting it, with the OSError as its context.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _OUT_OF_SPACE_ERRNOS:
      return True
    if _OUT_OF_SPACE_TEXT.search(str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def out_of_space_message(error: BaseException, output: Optional[str]) -> str:
  """One line for a full disk: where, and what to do."""
  step = _BEAM_STEP.search(str(error))
  where = f" in step {step.group(1).split('/')[0]}" if step else ""
  target = f" writing {output}" if output else ""
  return f"no space left on device{target}{where}; free some space (or write elsewhere) and run again"


class _DropLogsOf(logging.Filter):
  """Drops log records carrying an exception that `test` accepts (Beam logs a DoFn's exception before re-raising)."""

  def __init__(self, test: Callable[[BaseException], bool]):
    super().__init__()
    self._test = test

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else record.msg
    return not (isinstance(exc, BaseException) and self._test(exc))


@contextlib.contextmanager
def _quiet_beam_about(*types: type, also: Optional[Callable[[BaseException], bool]] = None) -> Iterator[None]:
  """While the job runs, Beam does not log (with a traceback) the exceptions the command reports in one line:
  those of the given types, and those `also` accepts.

  Only the in-process runner's log is filtered (where a DoFn's exception is logged, then re-raised to the caller);
  the exceptions still end the job.
  """
  logger = logging.getLogger("apache_beam.runners.common")
  drop = _DropLogsOf(lambda exc: isinstance(exc, types) or (also is not None and also(exc)))
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
      namespace = arguments.check(argv)
      from runtime import beam_import  # pylint: disable=import-outside-toplevel
      beam_import.import_beam_without_pandas()  # first (runtime/beam_import.py)
      from pipeline.progress import process_start  # pylint: disable=import-outside-toplevel
      from snapshot.checks import RunCheckError  # pylint: disable=import-outside-toplevel
      from pipeline.run import is_verbose, run  # pylint: disable=import-outside-toplevel
      from runtime import quiet  # pylint: disable=import-outside-toplevel
      from transforms.duplicate_ids import DuplicateIdError  # pylint: disable=import-outside-toplevel
      from stores.base import StoreError  # pylint: disable=import-outside-toplevel
      from runtime.failure_isolation import SystemicError  # pylint: disable=import-outside-toplevel
      quiet.enable(not is_verbose(argv))  # this process and the local workers it starts; the library never does
      try:
        with _quiet_beam_about(DuplicateIdError, RunCheckError, StoreError, SystemicError, KeyboardInterrupt,
                               also=out_of_space):
          outcome = run(argv, started_at=process_start())  # the summary's wall time counts the imports
      except (DuplicateIdError, RunCheckError, StoreError, SystemicError) as e:  # no traceback
        print(f"bert-embed run: error: {one_line(str(e).strip().splitlines()[0])}", file=sys.stderr)
        return 1
      except Exception as e:  # pylint: disable=broad-except
        if interrupted.is_set() or not out_of_space(e):
          raise
        print(f"bert-embed run: error: {out_of_space_message(e, namespace.output)}", file=sys.stderr)
        return 1
    except UsageError as e:
      print(f"bert-embed run: error: {one_line(e)}", file=sys.stderr)
      return 2
    except BaseException as e:  # pylint: disable=broad-except
      if not interrupted.is_set():
        worker_error = _WORKER_DATA_ERROR.search(str(e))
        if worker_error is None:
          raise
        print(f"bert-embed run: error: {one_line(worker_error.group(1))}", file=sys.stderr)
        return 1
      print(f"bert-embed run: {INTERRUPTED}", file=sys.stderr)  # one line, not Beam's and TensorFlow's stacks
      return 130
  if neighbours and outcome.manifest and outcome.config.output_format == "parquet":
    from cli.neighbours import report  # pylint: disable=import-outside-toplevel
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
  if command == "clean":
    from cli import clean  # pylint: disable=import-outside-toplevel
    try:
      return clean.main(rest)
    except UsageError as e:
      print(f"bert-embed: {e}", file=sys.stderr)
      return 2
  print(f"bert-embed: unknown command {command!r}\n{USAGE}", file=sys.stderr)
  return 2


def finish(code: int) -> NoReturn:
  """Ends the process with `code`, without the interpreter's teardown once TensorFlow is loaded.

  After a job, when every file is closed, that teardown (module and C++ static destructors) is a noticeable part of
  a small job's time (benchmarks/RESULTS.md, "Start-up"). The exit handlers registered with atexit still run first
  (logging, multiprocessing, temporary files), then the standard streams are flushed and the process ends.
  """
  if "tensorflow" not in sys.modules:
    sys.exit(code)
  try:
    # Python has no public call that runs the exit handlers before the process ends; an exit handler registered
    # first (to run last) would miss those registered before this module was imported.
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
