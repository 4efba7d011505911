"""The `bert-embed` command: `run` (the embedding job) and `export` (models to TF Hub form)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from pipeline.options import UsageError

USAGE = """usage: bert-embed {run,export} ...

  bert-embed run --input GLOB --output PREFIX --model default|DIR [options] [Beam pipeline options]
  bert-embed export --from hf:DIR|tf1:DIR|random:CONFIG.json --output DIR [--seq-length 128] [--lower-case|--cased]

`bert-embed run --help` lists the job's options."""


def _export(argv: list[str]) -> int:
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
  args = parser.parse_args(argv)
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
    if argv[i] == name and i + 1 < len(argv):
      value, i = int(argv[i + 1]), i + 2
    elif argv[i].startswith(name + "="):
      value, i = int(argv[i].split("=", 1)[1]), i + 1
    else:
      rest.append(argv[i])
      i += 1
  return rest, value


def _run(argv: list[str]) -> int:
  from pipeline.progress import process_start  # pylint: disable=import-outside-toplevel
  from pipeline.run import run  # pylint: disable=import-outside-toplevel
  from transforms.duplicates import DuplicateIdError  # pylint: disable=import-outside-toplevel
  argv, neighbours = _pop_int_flag(argv, "--show-neighbours")
  if "-h" in argv or "--help" in argv:
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
    from pipeline.options import BertEmbedOptions  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(prog="bert-embed run")
    BertEmbedOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    parser.add_argument("--show-neighbours", type=int, metavar="N",
                        help="after the job, print the nearest neighbour of N records (Parquet output)")
    parser.print_help()
    del PipelineOptions
    return 0
  try:
    outcome = run(argv, started_at=process_start())  # the summary's wall time counts the imports
  except UsageError as e:
    print(f"bert-embed run: error: {e}", file=sys.stderr)
    return 2
  except DuplicateIdError as e:  # a property of the data, not a bug: no traceback
    print(f"bert-embed run: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
    return 1
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
  command, rest = argv[0], argv[1:]
  if command == "run":
    return _run(rest)
  if command == "export":
    return _export(rest)
  print(f"bert-embed: unknown command {command!r}\n{USAGE}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
