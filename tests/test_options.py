"""Typed options: both flag spellings, booleans as bare flags and =true|false, pattern splitting."""
import argparse

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import BertEmbedOptions, parse_bool
from formats.usage import split_patterns


def _opts(*argv):
  return PipelineOptions(list(argv)).view_as(BertEmbedOptions)


def test_dashed_and_underscored_spellings_and_defaults():
  o = _opts("--input-format=jsonl", "--seq_length=64", "--text-pair-field", "b", "--format", "tfrecord")
  assert (o.input_format, o.seq_length, o.text_pair_field, o.output_format) == ("jsonl", 64, "b", "tfrecord")
  d = _opts()
  assert (d.input_format, d.seq_length, d.pooling, d.normalize, d.output_format, d.precision) == (
      "text", 128, None, None, "parquet", "fp32")


@pytest.mark.parametrize("argv,expected", [
    (["--normalize"], True), (["--normalize=true"], True), (["--normalize=false"], False),
    (["--normalize", "0"], False), ([], None)])
def test_boolean_flags(argv, expected):
  assert _opts(*argv).normalize is expected


@pytest.mark.parametrize("argv,message", [
    (["--pooling=max"], "argument --pooling: invalid choice: 'max' (choose from 'pooled', 'cls', 'mean')"),
    (["--seq-length=0"], "argument --seq-length/--seq_length: expected a positive integer, got '0'"),
    (["--normalize=maybe"], "argument --normalize: expected true or false, got 'maybe'"),
])
def test_bad_values_are_rejected_with_the_flag_and_the_reason(capsys, argv, message):
  with pytest.raises(SystemExit) as exited:
    _opts(*argv)
  assert exited.value.code == 2  # argparse's usage error
  errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
  assert len(errors) == 1 and errors[0].endswith(": error: " + message), errors


def test_parse_bool_names_the_bad_value():
  with pytest.raises(argparse.ArgumentTypeError, match="expected true or false, got 'maybe'"):
    parse_bool("maybe")


def test_split_patterns_keeps_brace_globs():
  assert split_patterns(["a.txt,b/*.txt", "c{1,2}.txt"]) == ["a.txt", "b/*.txt", "c{1,2}.txt"]
  assert split_patterns(None) == []


def test_options_survive_the_round_trip_to_workers():
  o = PipelineOptions(["--input=x", "--input=y", "--normalize", "--keep-text=false", "--limit=5"])
  again = PipelineOptions.from_dictionary(o.get_all_options(drop_default=True)).view_as(BertEmbedOptions)
  assert (again.input, again.normalize, again.keep_text, again.limit) == (["x", "y"], True, False, 5)


_RECOMMENDS = {"recommended_pooling": "mean", "recommended_normalize": True}  # as the default model's export


@pytest.mark.parametrize("flags, metadata, expected", [
    ([], _RECOMMENDS, ("mean", True)),
    (["--pooling", "mean"], _RECOMMENDS, ("mean", True)),  # the recommendation given: as if left out
    (["--pooling", "cls"], _RECOMMENDS, ("cls", True)),  # normalising follows the model's advice with any pooling
    (["--pooling", "mean", "--normalize=false"], _RECOMMENDS, ("mean", False)),
    (["--normalize", "false"], _RECOMMENDS, ("mean", False)),
    ([], None, ("pooled", False)),  # a model without advice
    (["--pooling", "cls", "--normalize"], None, ("cls", True)),
])
def test_an_option_given_as_the_models_recommendation_gives_what_leaving_it_out_gives(flags, metadata, expected):
  from pipeline.config import resolve_pooling  # pylint: disable=import-outside-toplevel
  o = PipelineOptions(flags).view_as(BertEmbedOptions)
  assert resolve_pooling(metadata, o.pooling, o.normalize) == expected
