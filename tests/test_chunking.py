"""--long-text chunk: windows follow the tokenizer's own pieces; mean of windows; one-window texts unchanged."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401
from apache_beam.testing.test_pipeline import TestPipeline
from hypothesis import given, settings, strategies as st

from formats.usage import UsageError
from pipeline.run import run
from runtime.text_windows import window_bounds

SEQ = 16  # windows of 14 pieces
LONG = " ".join(["the cat sat on the mat and the dog is hello world"] * 4)
SHORT = ["hello world!", "the dog sat on the mat."]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), window=st.integers(1, 40), data=st.data())
def test_window_bounds_cover_every_piece_with_the_stride_as_overlap(n, window, data):
  stride = data.draw(st.integers(0, window - 1))
  bounds = window_bounds(n, window, stride)
  assert bounds[0][0] == 0 and bounds[-1][1] == n
  covered = set()
  for a, b in bounds:
    assert 0 <= a <= b <= n and b - a <= window
    covered.update(range(a, b))
  assert covered == set(range(n))
  for (a0, b0), (a1, b1) in zip(bounds, bounds[1:]):
    assert a1 == a0 + window - stride and b0 - a1 == stride or b1 == n
  assert len(bounds) == 1 or all(b - a == window for a, b in bounds[:-1])


def _pieces(model_dir, text):
  pre = tf.saved_model.load(os.path.join(model_dir, "preprocessor"))
  return pre.tokenize(tf.constant([text])).merge_dims(-2, -1).flat_values.numpy().tolist()


def _direct_window_means(model_dir, ids, bounds, cls_id, sep_id):
  """The reference: `[CLS] ids[a:b] [SEP]` for each window, built here by hand and given to the encoder
  SavedModel alone (no padding, segment 0), then the numpy mean of its token vectors."""
  enc = tf.saved_model.load(os.path.join(model_dir, "encoder"))
  out = []
  for a, b in bounds:
    word_ids = np.array([[cls_id, *ids[a:b], sep_id]], np.int32)
    inputs = {"input_word_ids": tf.constant(word_ids), "input_mask": tf.constant(np.ones_like(word_ids)),
              "input_type_ids": tf.constant(np.zeros_like(word_ids))}
    tokens = enc(inputs)["sequence_output"].numpy()[0]
    out.append(tokens.astype(np.float64).mean(axis=0))
  return np.array(out)


def _run(tmp_path, model_dir, name, *extra):
  argv = ["--model", model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / name),
          "--seq-length", str(SEQ), "--keep-text", "--pooling", "mean", *extra]
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  rows = [r for f in outcome.manifest["output_files"] for r in pq.read_table(f).to_pylist()]
  return outcome, rows


def test_rows_follow_the_tokenizers_pieces_and_mean_is_their_weighted_mean(tmp_path, tiny_model_dir,
                                                                          tiny_vocab_tokens):
  (tmp_path / "in.txt").write_text("\n".join([LONG] + SHORT) + "\n", encoding="utf-8")
  long_id = f"{tmp_path / 'in.txt'}:1"
  outcome, rows = _run(tmp_path, tiny_model_dir, "rows", "--long-text", "chunk", "--chunk-stride", "4",
                       "--emit-tokens")
  pieces = [tiny_vocab_tokens.index(word) for word in LONG.split()]  # every word of LONG is one vocabulary entry
  assert _pieces(tiny_model_dir, LONG) == pieces
  window, stride = SEQ - 2, 4
  bounds = [(a, min(a + window, len(pieces))) for a in range(0, len(pieces) - stride, window - stride)]
  assert bounds[-1][1] == len(pieces) and len(bounds) > 3
  windows = sorted((r for r in rows if r["parent_id"] == long_id), key=lambda r: r["chunk_index"])
  assert [(r["chunk_start_piece"], r["chunk_end_piece"]) for r in windows] == bounds
  direct = _direct_window_means(tiny_model_dir, pieces, bounds, tiny_vocab_tokens.index("[CLS]"),
                                tiny_vocab_tokens.index("[SEP]"))
  np.testing.assert_allclose(np.array([r["embedding"] for r in windows]), direct, atol=1e-5)
  for r in windows:
    assert r["id"] == f"{long_id}#{r['chunk_index']}"
    assert r["token_ids"][1:-1] == pieces[r["chunk_start_piece"]:r["chunk_end_piece"]]
  for a, b in zip(windows, windows[1:]):
    assert a["chunk_end_piece"] - b["chunk_start_piece"] == 4
  c = outcome.manifest["counts"]
  assert (c["read"], c["written"], c["rows"], c["windows"]) == (3, 3, len(windows) + 2, len(windows) + 2)
  short = {r["id"]: r for r in rows if r["parent_id"] != long_id}
  assert sorted(short) == [f"{tmp_path / 'in.txt'}:{i}#0" for i in (2, 3)]  # a text that fits is window 0 of 1
  assert c["read"] == c["written"] + c["dead_lettered"]

  outcome_mean, mean_rows = _run(tmp_path, tiny_model_dir, "mean", "--long-text", "chunk", "--chunk-stride", "4",
                                 "--chunk-output", "mean", "--normalize")
  by_id = {r["id"]: r for r in mean_rows}
  assert sorted(by_id) == sorted([long_id, f"{tmp_path / 'in.txt'}:2", f"{tmp_path / 'in.txt'}:3"])
  weights = np.array([b - a for a, b in bounds], dtype=np.float64)  # each window weighs its own pieces
  expected = (direct * weights[:, None]).sum(0) / weights.sum()
  expected /= np.linalg.norm(expected)
  assert np.abs(expected - direct[0] / np.linalg.norm(direct[0])).max() > 1e-3  # the windows' vectors differ
  np.testing.assert_allclose(by_id[long_id]["embedding"], expected, atol=1e-5)
  assert "parent_id" not in by_id[long_id]
  assert outcome_mean.manifest["counts"]["windows"] == len(windows) + 2

  _, truncated_rows = _run(tmp_path, tiny_model_dir, "plain", "--normalize")
  plain = {r["id"]: r for r in truncated_rows}
  for key in (f"{tmp_path / 'in.txt'}:2", f"{tmp_path / 'in.txt'}:3"):  # texts that fit one window
    np.testing.assert_allclose(by_id[key]["embedding"], plain[key]["embedding"], atol=1e-6)
  assert plain[long_id]["truncated"] is True and by_id[long_id]["truncated"] is False


@pytest.mark.parametrize("extra,message", [
    (["--text-pair-field", "b", "--input-format", "jsonl"], "pairs"),
    (["--chunk-stride", "14"], "--chunk-stride"),
    (["--chunk-output", "mean", "--emit-tokens"], "--emit-tokens"),
])
def test_chunk_option_conflicts_fail_before_the_job(tmp_path, tiny_model_dir, extra, message):
  (tmp_path / "in.txt").write_text("hello\n", encoding="utf-8")
  with pytest.raises(UsageError, match=message):
    run(["--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "e"),
         "--seq-length", str(SEQ), "--long-text", "chunk", *extra])


def test_a_record_is_written_whole_or_dead_lettered_whole(tmp_path, poisoned_model_dir, capsys):
  # The poisoned model encodes any window holding "fox" to NaN, which fails validation at the write stage.
  # With --dedupe-texts the copies get their text's windows (or its fate) under their own ids.
  texts = {"late": LONG + " the quick brown fox", "early": "the quick brown fox " + LONG, "clean": LONG,
           "short-bad": "the fox sat.", "short-1": SHORT[0], "short-2": SHORT[1]}
  copies = {"late-copy": "late", "clean-copy": "clean"}
  lines = list(texts.values()) + [texts[of] for of in copies.values()]
  (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  ids = {name: f"{tmp_path / 'in.txt'}:{i}" for i, name in enumerate([*texts, *copies], 1)}
  argv = ["--model", poisoned_model_dir, "--input", str(tmp_path / "in.txt"), "--seq-length", str(SEQ),
          "--pooling", "mean", "--long-text", "chunk", "--chunk-stride", "4", "--dedupe-texts",
          "--max-dead-letter-fraction", "1"]  # half of these records are dead-lettered on purpose
  outcome = run(argv + ["--output", str(tmp_path / "rows")], test_pipeline=TestPipeline(argv=argv))
  rows = [r for f in outcome.manifest["output_files"] for r in pq.read_table(f).to_pylist()]
  pieces = {name: len(_pieces(poisoned_model_dir, text)) for name, text in texts.items()}
  windows = {name: len(window_bounds(n, SEQ - 2, 4)) for name, n in pieces.items()}
  assert windows["late"] > 1 and windows["early"] > 1  # "fox" is in the last window of one, the first of the other
  written = ("clean", "clean-copy", "short-1", "short-2")
  assert sorted({r["parent_id"] for r in rows}) == sorted(ids[n] for n in written)
  assert sorted(r["id"] for r in rows if r["parent_id"] == ids["clean-copy"]) == sorted(
      f"{ids['clean-copy']}#{k}" for k in range(windows["clean"]))
  assert len(rows) == 2 * windows["clean"] + 2
  dead = [json.loads(line) for f in outcome.manifest["error_files"] for line in open(f, encoding="utf-8")]
  assert sorted(d["id"] for d in dead) == sorted(ids[n] for n in ("late", "late-copy", "early", "short-bad"))
  for d in dead:
    assert d["stage"] == "write" and "non-finite" in d["reason"], d
  for name in ("late", "late-copy"):
    late = next(d for d in dead if d["id"] == ids[name])
    assert f"{ids[name]}#{windows['late'] - 1}" in late["reason"]  # names the window that failed
  c = outcome.manifest["counts"]
  assert (c["read"], c["written"], c["dead_lettered"], c["rows"]) == (8, 4, 4, 2 * windows["clean"] + 2)
  assert (c["encoded"], c["windows"]) == (6, sum(windows.values()))  # distinct texts through the model, windows
  assert c["new"] + c["changed"] + c["unchanged"] == c["written"] + c["dead_lettered"]
  out = capsys.readouterr().out
  assert "read == written + dead-lettered: ok" in out
  assert "8 new, 0 changed, 0 unchanged (4 written, 4 dead-lettered after reading), 0 deleted; 6 records encoded" in out

  mean = run(argv + ["--output", str(tmp_path / "mean"), "--chunk-output", "mean"],
             test_pipeline=TestPipeline(argv=argv))
  c = mean.manifest["counts"]
  assert (c["read"], c["written"], c["dead_lettered"], c["rows"]) == (8, 4, 4, 4)
  assert (c["encoded"], c["windows"]) == (6, sum(windows.values()))
