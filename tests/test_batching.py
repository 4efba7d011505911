"""Length-bucketed batching (transforms/embedding/batching.py): bucket choice, token budget, and vectors equal to
unbucketed."""
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.transforms import window

from runtime import buckets

from transforms.embedding import batching
from transforms.embedding.embed import EmbedTexts
from transforms.embedding.embed_config import EmbedConfig
from formats.records import EncoderInput, TextRecord


def _element(i: int, num_tokens: int, seq_length: int = 128) -> EncoderInput:
  ids = np.zeros(seq_length, np.int32)
  ids[:num_tokens] = 7
  mask = (ids != 0).astype(np.int32)
  return EncoderInput(record=TextRecord(id=str(i), text="x"), input_word_ids=ids, input_mask=mask,
                      input_type_ids=np.zeros(seq_length, np.int32), num_tokens=num_tokens, truncated=False)


def test_bucket_lengths_are_capped_at_seq_length_which_is_always_the_last():
  assert buckets.make_spec(128).lengths == buckets.DEFAULT_BUCKET_LENGTHS
  assert buckets.DEFAULT_BUCKET_LENGTHS[-1] == 128
  assert buckets.make_spec(64).lengths == tuple(range(2, 65))
  assert buckets.make_spec(50).lengths == tuple(range(2, 51))
  assert buckets.make_spec(256).lengths == buckets.DEFAULT_BUCKET_LENGTHS + (256,)
  assert buckets.make_spec(12).lengths == tuple(range(2, 13))
  assert buckets.make_spec(128, "8-32/8,100").lengths == (8, 16, 24, 32, 100, 128)
  assert buckets.make_spec(128, "128").lengths == (128,)
  assert buckets.make_spec(128, (64, 8, 64)).lengths == (8, 64, 128)


def test_bucket_length_ranges():
  assert buckets.parse_bucket_lengths("2-64,72-128/8") == buckets.DEFAULT_BUCKET_LENGTHS
  assert buckets.DEFAULT_BUCKET_LENGTHS == tuple(range(2, 65)) + (72, 80, 88, 96, 104, 112, 120, 128)
  assert buckets.parse_bucket_lengths("16, 4-6, 10-20/5") == (4, 5, 6, 10, 15, 16, 20)


@pytest.mark.parametrize("bad", ["", "a,b", "0,16", "-4", " , ", "8-4", "3/2", "2-10/0", "2-x"])
def test_bad_bucket_lengths_are_rejected(bad):
  with pytest.raises(ValueError):
    buckets.parse_bucket_lengths(bad)


def test_a_record_goes_to_the_smallest_bucket_that_holds_it():
  spec = buckets.make_spec(128, "16,32,64,96")
  assert [spec.bucket(n) for n in (1, 3, 16, 17, 32, 33, 64, 65, 96, 97, 128)] == [
      16, 16, 16, 32, 32, 64, 64, 96, 96, 128, 128]
  with pytest.raises(ValueError):
    spec.bucket(129)


def test_rows_per_batch_come_from_the_token_budget_and_the_row_cap():
  spec = buckets.make_spec(128, "16,32,64,96", max_batch_tokens=4096, max_batch_size=64)
  assert [spec.rows(b) for b in spec.lengths] == [64, 64, 64, 42, 32]
  assert buckets.make_spec(128, max_batch_tokens=100, max_batch_size=64).rows(128) == 1  # never 0


def _check_budget(batches, spec, budget, cap):
  for batch in batches:
    padded = spec.bucket(max(e.num_tokens for e in batch))
    assert len(batch) * padded <= budget and len(batch) <= cap


def test_batches_stay_within_the_token_budget_and_hold_every_record_once():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 129, 1000)
  spec = buckets.make_spec(128, max_batch_tokens=2048, max_batch_size=100)
  batches = batching.bucket_batches([_element(i, int(n)) for i, n in enumerate(lengths)], spec)
  seen = [e.record.id for b in batches for e in b]
  assert sorted(seen) == sorted(str(i) for i in range(len(lengths)))
  _check_budget(batches, spec, 2048, 100)
  # Partial batches of neighbouring buckets are merged: fewer batches than one partial per bucket would make.
  per_bucket = np.bincount([spec.lengths.index(spec.bucket(int(n))) for n in lengths])
  one_partial_each = sum(-(-int(n) // spec.rows(b)) for n, b in zip(per_bucket, spec.lengths))
  assert len(batches) < one_partial_each


def _segmentations(n: int):
  """Every way to cut a sequence of n items into contiguous non-empty runs, as lists of (start, end)."""
  for mask in range(1 << max(0, n - 1)):
    cuts = [0] + [k + 1 for k in range(n - 1) if mask >> k & 1] + [n]
    yield list(zip(cuts, cuts[1:]))


@pytest.mark.parametrize("seed", range(6))
def test_leftovers_are_cut_at_the_cheapest_points_a_brute_force_finds(seed):
  rng = np.random.default_rng(seed)
  spec = buckets.make_spec(64, max_batch_tokens=96, max_batch_size=5)
  elements = [_element(i, int(n), 64) for i, n in enumerate(rng.integers(3, 65, 11))]
  packed = buckets.pack_sorted(elements, spec, overhead_tokens=20)
  batches = [b for _, b in packed]
  assert [e.num_tokens for b in batches for e in b] == sorted(e.num_tokens for e in elements)
  _check_budget(batches, spec, 96, 5)
  assert all(length == spec.bucket(b[-1].num_tokens) for length, b in packed)
  got = sum(len(b) * length + 20 for length, b in packed)
  ordered = sorted(e.num_tokens for e in elements)
  best = min(sum((j - i) * spec.bucket(ordered[j - 1]) + 20 for i, j in cuts)
             for cuts in _segmentations(len(ordered))
             if all(j - i <= spec.rows(spec.bucket(ordered[j - 1])) for i, j in cuts))
  assert got == best


def test_bucket_batches_in_beam_keep_windows_apart():
  spec = buckets.make_spec(64, max_batch_tokens=64, max_batch_size=8)

  def check(batches):
    assert sorted(int(e.record.id) for b in batches for e in b) == list(range(40))
    _check_budget(batches, spec, 64, 8)
    for b in batches:
      assert len({int(e.record.id) % 2 for e in b}) == 1  # the two windows never share a batch

  with TestPipeline() as p:
    out = (p
           | beam.Create([_element(i, 3 + (i * 7) % 60, 64) for i in range(40)])
           | beam.Map(lambda e: window.TimestampedValue(e, int(e.record.id) % 2 * 100))
           | beam.WindowInto(window.FixedWindows(50))
           | batching.BucketBatches(spec))
    assert_that(out, check)


# Texts of 1 to ~40 wordpieces, so that they fall into several buckets.
TINY_TEXTS = [
    "hello world!",
    "the cat sat on the mat.",
    "a dog is on the mat, the cat is not.",
    "the quick brown fox jumps over the lazy dog, and the dog does not play with the fox at night.",
    "cats",
    " ".join(["the big red car was in the house"] * 5),
    "is the world hello?",
    "what time is it in the night when the people walk and the children play in the tree house?",
]


def _embed(export_dir, texts, seq_length, out_file, **kwargs):
  """{id: vector} from EmbedTexts on the DirectRunner (collected through a file: DoFns are pickled)."""

  def save(rows):
    with open(out_file, "w", encoding="utf-8") as f:
      json.dump(dict(rows), f)

  with TestPipeline() as p:
    records = p | beam.Create([TextRecord(id=f"r{i}", text=t) for i, t in enumerate(texts)])
    embedded = records | EmbedTexts(os.path.join(export_dir, "preprocessor"), os.path.join(export_dir, "encoder"),
                                    EmbedConfig(seq_length=seq_length, **kwargs))
    _ = (embedded.embeddings
         | beam.Map(lambda r: (r.id, r.embedding.tolist()))
         | beam.combiners.ToList()
         | beam.Map(save))
  with open(out_file, encoding="utf-8") as f:
    return {k: np.asarray(v, np.float32) for k, v in json.load(f).items()}


@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_bucketed_vectors_equal_unbucketed_and_fixed_length_ones(request, tmp_path, model):
  export_dir = request.getfixturevalue("tiny_model_dir" if model == "tiny" else "minilm_model_dir")
  seq_length = 32 if model == "tiny" else 128
  texts = TINY_TEXTS if model == "tiny" else TINY_TEXTS + [
      "Fix a crash when the configuration file is empty; the parser now reports the missing section instead."]
  bucketed = _embed(export_dir, texts, seq_length, str(tmp_path / "bucketed.json"), max_batch_tokens=64)
  unbucketed = _embed(export_dir, texts, seq_length, str(tmp_path / "unbucketed.json"), bucket_lengths=None)
  fixed = _embed(export_dir, texts, seq_length, str(tmp_path / "fixed.json"), bucket_lengths=(seq_length,))
  assert sorted(bucketed) == sorted(unbucketed) == sorted(fixed) == sorted(f"r{i}" for i in range(len(texts)))
  for key in bucketed:
    np.testing.assert_allclose(bucketed[key], unbucketed[key], atol=1e-5, rtol=0)
    np.testing.assert_allclose(bucketed[key], fixed[key], atol=1e-5, rtol=0)
