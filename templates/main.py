"""Flex Template entry point: the same job as `bert-embed run` (parameters arrive as --name=value)."""
from pipeline.cli import finish
from pipeline.run import main

if __name__ == "__main__":
  finish(main())
