"""Dataflow Flex Template: metadata parameters are exactly the pipeline's options; image pins equal setup.py's."""
import argparse
import json
import pathlib
import re
import runpy

from pipeline.options import BertEmbedOptions

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _option_dests():
  parser = argparse.ArgumentParser()
  BertEmbedOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  return {a.dest for a in parser._actions if a.dest != "help"}  # pylint: disable=protected-access


def test_metadata_parameters_are_exactly_the_options_and_up_to_date():
  committed = json.loads((ROOT / "templates" / "metadata.json").read_text())
  names = {p["name"] for p in committed["parameters"]}
  assert {"format" if d == "output_format" else d for d in _option_dests()} == names
  generated = runpy.run_path(str(ROOT / "templates" / "make_metadata.py"))["metadata"]()
  assert committed == generated, "run templates/make_metadata.py"
  for p in committed["parameters"]:
    for rx in p.get("regexes", []):
      re.compile(rx)
  required = {p["name"] for p in committed["parameters"] if not p["isOptional"]}
  assert required == {"input", "output"}


def _pins(text):
  names = r"apache-beam|tensorflow|tensorflow-text|qdrant-client|psycopg"
  return dict(re.findall(rf'"?({names})(?:\[[a-z-]+\])?==([0-9.]+)', text))


def test_image_pins_match_setup_py():
  setup = _pins((ROOT / "setup.py").read_text())
  assert set(setup) == {"apache-beam", "tensorflow", "tensorflow-text", "qdrant-client", "psycopg"}
  for name in ("Dockerfile", "Dockerfile.gpu"):
    text = (ROOT / "templates" / name).read_text()
    assert _pins(text) == setup, name
    assert f"BEAM_VERSION={setup['apache-beam']}" in text, name
