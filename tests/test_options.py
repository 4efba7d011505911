"""Typed options: both flag spellings, booleans as bare flags and =true|false, pattern splitting."""
import argparse

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import BertEmbedOptions, parse_bool, split_patterns


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


def test_bad_values_are_rejected():
  with pytest.raises(argparse.ArgumentTypeError):
    parse_bool("maybe")
  with pytest.raises(SystemExit):
    _opts("--pooling=max").pooling  # pylint: disable=expression-not-assigned
  with pytest.raises(SystemExit):
    _opts("--seq-length=0").seq_length  # pylint: disable=expression-not-assigned


def test_split_patterns_keeps_brace_globs():
  assert split_patterns(["a.txt,b/*.txt", "c{1,2}.txt"]) == ["a.txt", "b/*.txt", "c{1,2}.txt"]
  assert split_patterns(None) == []


def test_options_survive_the_round_trip_to_workers():
  o = PipelineOptions(["--input=x", "--input=y", "--normalize", "--keep-text=false", "--limit=5"])
  again = PipelineOptions.from_dictionary(o.get_all_options(drop_default=True)).view_as(BertEmbedOptions)
  assert (again.input, again.normalize, again.keep_text, again.limit) == (["x", "y"], True, False, 5)
