"""The command line: `bert-embed run | export | neighbours | clean` (README "Layout")."""
