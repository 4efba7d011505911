"""`python -m cli run ARGS`: the same as `bert-embed run ARGS`."""
from cli.main import entry

entry()
