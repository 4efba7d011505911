"""Flex Template entry point: the same job as `bert-embed run` (parameters arrive as --name=value)."""
from cli.main import finish
from pipeline.run import main

if __name__ == "__main__":
  finish(main())
