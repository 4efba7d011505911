"""Flex Template entry point: the same job as `bert-embed run` (parameters arrive as --name=value)."""
import sys

from pipeline.run import main

if __name__ == "__main__":
  sys.exit(main())
