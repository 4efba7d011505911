"""Pooling against brute-force per-record loops."""
import math

import numpy as np
import pytest

from runtime import pooling


def _outputs(rng, b=3, t=7, h=5, layers=4):
  enc = [rng.normal(size=(b, t, h)).astype(np.float32) for _ in range(layers)]
  return {"pooled_output": rng.normal(size=(b, h)).astype(np.float32), "sequence_output": enc[-1],
          "encoder_outputs": enc}


def _mask(lengths, t):
  return np.array([[1] * n + [0] * (t - n) for n in lengths], dtype=np.int32)


def test_mean_pooling_matches_a_loop_over_real_tokens():
  rng = np.random.default_rng(0)
  out = _outputs(rng)
  lengths = [7, 3, 1]
  got = pooling.pool(out, _mask(lengths, 7), "mean")
  for i, n in enumerate(lengths):
    expected = [sum(float(out["sequence_output"][i, j, k]) for j in range(n)) / n for k in range(5)]
    np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)


def test_cls_and_pooled():
  rng = np.random.default_rng(1)
  out = _outputs(rng)
  mask = _mask([7, 2, 4], 7)
  np.testing.assert_array_equal(pooling.pool(out, mask, "cls"), out["sequence_output"][:, 0])
  np.testing.assert_array_equal(pooling.pool(out, mask, "pooled"), out["pooled_output"])


def test_layers_average_before_pooling_and_negative_indices():
  rng = np.random.default_rng(2)
  out = _outputs(rng)
  mask = _mask([5, 5, 5], 7)
  got = pooling.pool(out, mask, "cls", layers=(0, -1))
  expected = (out["encoder_outputs"][0][:, 0] + out["encoder_outputs"][3][:, 0]) / 2
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  with pytest.raises(ValueError):
    pooling.pool(out, mask, "pooled", layers=(0,))


def test_normalize_gives_unit_vectors_in_the_same_direction():
  rng = np.random.default_rng(3)
  out = _outputs(rng)
  raw = pooling.pool(out, _mask([7, 7, 7], 7), "mean")
  unit = pooling.pool(out, _mask([7, 7, 7], 7), "mean", normalize=True)
  for r, u in zip(raw, unit):
    assert math.isclose(float(np.linalg.norm(u)), 1.0, rel_tol=1e-6)
    np.testing.assert_allclose(u * np.linalg.norm(r), r, rtol=1e-5)


def test_parse_and_check_layers():
  assert pooling.parse_layers("-1, -2") == (-1, -2)
  assert pooling.parse_layers(None) is None
  with pytest.raises(ValueError):
    pooling.parse_layers("a,b")
  with pytest.raises(ValueError):
    pooling.parse_layers("1,1")
  pooling.check_layers((-4, 3), 4)
  with pytest.raises(ValueError):
    pooling.check_layers((4,), 4)
  with pytest.raises(ValueError):
    pooling.check_layers((-5,), 4)
