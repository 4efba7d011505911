"""Flex Template entry point: `bert-embed run` (parameters arrive as --name=value)."""
import sys

from cli.main import finish, main

if __name__ == "__main__":
  finish(main(["run", *sys.argv[1:]]))
