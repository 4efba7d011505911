"""Writes templates/metadata.json from the pipeline's own option definitions (run after changing an option).

tests/test_templates.py checks that the committed metadata.json equals what this script produces.
"""
import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.options import BertEmbedOptions, parse_bool, positive_int, non_negative_int  # noqa: E402

REQUIRED = {"input", "output"}


def _regex(action: argparse.Action):
  if action.choices:
    return ["^(" + "|".join(action.choices) + ")$"]
  if action.type is parse_bool:
    return ["^(true|false)$"]
  if action.type in (positive_int, non_negative_int, int):
    return ["^[0-9]+$"]
  return None


def parameters() -> list[dict]:
  parser = argparse.ArgumentParser()
  BertEmbedOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  seen, params = set(), []
  for action in parser._actions:  # pylint: disable=protected-access
    if action.dest in ("help",) or action.dest in seen or action.help == argparse.SUPPRESS:
      continue
    seen.add(action.dest)
    name = "format" if action.dest == "output_format" else action.dest
    param = {"name": name, "label": name.replace("_", " ").capitalize(), "helpText": action.help or name,
             "isOptional": name not in REQUIRED}
    if (regexes := _regex(action)) is not None:
      param["regexes"] = regexes
    params.append(param)
  return params


def metadata() -> dict:
  return {"name": "bert-embed", "description": "Embeds a text corpus with a TF Hub BERT model (Apache Beam).",
          "streaming": False, "supportsAtLeastOnce": False, "supportsExactlyOnce": True,
          "parameters": parameters()}


if __name__ == "__main__":
  (ROOT / "templates" / "metadata.json").write_text(json.dumps(metadata(), indent=2) + "\n")
  print("wrote templates/metadata.json")
