"""Tests for modeling.encoder: shapes, BERT math against numpy, the MLM head."""

import math

import numpy as np
import pytest
import tensorflow as tf

from modeling import encoder as encoder_lib
from modeling import weight_names as wn
from modeling.activations import get_activation
from modeling.config import BertConfig
from modeling.importers import random_init

_CONFIG = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=40, layer_norm_eps=1e-6)


def _weights(config, seed=3):
  """Random weights with non-trivial LayerNorm parameters and kernels large
  enough (std 0.1) that activations see inputs of order 1."""
  weights = random_init.random_weights(config, seed)
  rng = np.random.default_rng(seed + 100)
  for name in weights:
    if name.endswith("/kernel"):
      weights[name] = weights[name] * 5.0
    elif name.endswith("/gamma"):
      weights[name] = (1 + 0.2 * rng.standard_normal(
          weights[name].shape)).astype(np.float32)
    elif name.endswith("/beta"):
      weights[name] = (0.2 * rng.standard_normal(
          weights[name].shape)).astype(np.float32)
  return weights


def _inputs(batch, length, vocab_size, seed=0, min_len=1):
  """Random packed inputs with right padding; int32 [B, T] each."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min(min_len, length), length + 1, size=batch)
  lengths[0] = length
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(5, vocab_size, size=(batch, length)).astype(np.int32)
  types = (rng.random((batch, length)) < 0.4).astype(np.int32)
  return {"input_word_ids": ids * mask, "input_mask": mask,
          "input_type_ids": types * mask}


# --- an independent numpy BERT (float64) ---

def _np_act(name, x):
  if name == "gelu":
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi)
                                  * (x + 0.044715 * x ** 3)))
  assert name == "relu"
  return np.maximum(x, 0)


def _np_layer_norm(x, w, prefix, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * w[f"{prefix}/gamma"] + \
      w[f"{prefix}/beta"]


def _np_dense(x, w, prefix):
  return x @ w[f"{prefix}/kernel"] + w[f"{prefix}/bias"]


def numpy_bert(config, weights, inputs):
  """Returns (sequence_output [B,T,H], pooled [B,H] or None, layer outputs)."""
  w = {k: v.astype(np.float64) for k, v in weights.items()}
  ids, mask = inputs["input_word_ids"], inputs["input_mask"]
  b, t = ids.shape
  x = (w[wn.WORD_EMBEDDINGS][ids] + w[wn.POSITION_EMBEDDINGS][:t][None]
       + w[wn.TOKEN_TYPE_EMBEDDINGS][inputs["input_type_ids"]])
  x = _np_layer_norm(x, w, wn.EMBEDDINGS_LAYER_NORM, config.layer_norm_eps)
  n, d = config.num_attention_heads, config.head_size
  layers = []
  for i in range(config.num_hidden_layers):
    p = wn.layer_prefix(i)
    heads = lambda y: y.reshape(b, t, n, d).transpose(0, 2, 1, 3)
    q = heads(_np_dense(x, w, f"{p}/attention/self/query"))
    k = heads(_np_dense(x, w, f"{p}/attention/self/key"))
    v = heads(_np_dense(x, w, f"{p}/attention/self/value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, n * d)
    x = _np_layer_norm(x + _np_dense(ctx, w, f"{p}/attention/output/dense"),
                       w, f"{p}/attention/output/LayerNorm",
                       config.layer_norm_eps)
    inner = _np_act(config.hidden_act,
                    _np_dense(x, w, f"{p}/intermediate/dense"))
    x = _np_layer_norm(x + _np_dense(inner, w, f"{p}/output/dense"), w,
                       f"{p}/output/LayerNorm", config.layer_norm_eps)
    layers.append(x)
  pooled = None
  if f"{wn.POOLER_DENSE}/kernel" in w:
    pooled = np.tanh(_np_dense(x[:, 0], w, wn.POOLER_DENSE))
  return x, pooled, layers


def numpy_mlm_logits(config, weights, sequence_output, positions):
  """Head by hand: gather -> dense + act -> LayerNorm -> E^T + bias."""
  w = {k: v.astype(np.float64) for k, v in weights.items()}
  gathered = np.take_along_axis(sequence_output.astype(np.float64),
                                positions[:, :, None], axis=1)
  x = _np_act(config.hidden_act, _np_dense(gathered, w, wn.MLM_TRANSFORM_DENSE))
  x = _np_layer_norm(x, w, wn.MLM_TRANSFORM_LAYER_NORM, config.layer_norm_eps)
  return x @ w[wn.WORD_EMBEDDINGS].T + w[wn.MLM_OUTPUT_BIAS]


@pytest.fixture(scope="module")
def weights():
  return _weights(_CONFIG)


@pytest.fixture(scope="module")
def encoder(weights):
  return encoder_lib.build_encoder(_CONFIG, weights)


@pytest.mark.parametrize("batch, length", [(1, 1), (3, 7), (2, 40), (5, 13)])
def test_shapes_and_dtypes(encoder, batch, length):
  inputs = _inputs(batch, length, _CONFIG.vocab_size, seed=length)
  out = encoder(inputs)
  h = _CONFIG.hidden_size
  assert out["sequence_output"].shape == (batch, length, h)
  assert out["pooled_output"].shape == (batch, h)
  assert out["default"].shape == (batch, h)
  assert len(out["encoder_outputs"]) == _CONFIG.num_hidden_layers
  for layer_output in out["encoder_outputs"]:
    assert layer_output.shape == (batch, length, h)
    assert layer_output.dtype == tf.float32
  for key in ("sequence_output", "pooled_output", "default"):
    assert out[key].dtype == tf.float32
  np.testing.assert_array_equal(out["encoder_outputs"][-1],
                                out["sequence_output"])
  np.testing.assert_array_equal(out["default"], out["pooled_output"])


def test_one_trace_serves_every_shape(weights):
  enc = encoder_lib.build_encoder(_CONFIG, weights)
  for batch, length in [(1, 3), (4, 9), (2, 17)]:
    enc(_inputs(batch, length, _CONFIG.vocab_size))
  assert enc.__call__.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_matches_numpy_reference(act):
  config = BertConfig(**{**_CONFIG.to_dict(), "hidden_act": act})
  weights = _weights(config, seed=11)
  inputs = _inputs(4, 12, config.vocab_size, seed=5, min_len=3)
  out = encoder_lib.build_encoder(config, weights)(inputs)
  seq, pooled, layers = numpy_bert(config, weights, inputs)
  real = inputs["input_mask"].astype(bool)
  # Padding positions are unconstrained; compare real tokens only.
  np.testing.assert_allclose(out["sequence_output"].numpy()[real], seq[real],
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out["encoder_outputs"][0].numpy()[real],
                             layers[0][real], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out["pooled_output"], pooled, atol=1e-5,
                             rtol=1e-5)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_pytorch_tanh",
                                 "relu"])
def test_activation_functions(act):
  x = np.linspace(-6, 6, 241)
  np.testing.assert_allclose(get_activation(act)(tf.constant(x)), _np_act(act, x),
                             atol=1e-8, rtol=1e-6)


def test_activations_differ():
  """Guards the reference test: the three activations give distinct outputs."""
  inputs = _inputs(2, 6, _CONFIG.vocab_size)
  outs = []
  for act in ("gelu", "gelu_new", "relu"):
    config = BertConfig(**{**_CONFIG.to_dict(), "hidden_act": act})
    enc = encoder_lib.build_encoder(config, _weights(config, seed=11))
    outs.append(enc(inputs)["sequence_output"].numpy())
  assert not np.allclose(outs[0], outs[1], atol=1e-4)
  assert not np.allclose(outs[0], outs[2], atol=1e-4)


def test_padding_does_not_change_real_tokens(encoder):
  inputs = _inputs(3, 8, _CONFIG.vocab_size, seed=2, min_len=8)
  padded = {k: np.pad(v, [(0, 0), (0, 6)]) for k, v in inputs.items()}
  short = encoder(inputs)
  long = encoder(padded)
  np.testing.assert_allclose(long["sequence_output"].numpy()[:, :8],
                             short["sequence_output"], atol=1e-5)
  np.testing.assert_allclose(long["pooled_output"], short["pooled_output"],
                             atol=1e-5)


def test_mask_matters(encoder):
  inputs = _inputs(1, 6, _CONFIG.vocab_size, seed=4, min_len=6)
  masked = dict(inputs, input_mask=np.array([[1, 1, 1, 0, 0, 0]], np.int32))
  a = encoder(inputs)["sequence_output"].numpy()[:, :3]
  b = encoder(masked)["sequence_output"].numpy()[:, :3]
  assert not np.allclose(a, b, atol=1e-4)


def test_too_long_input_fails(encoder):
  with pytest.raises(tf.errors.InvalidArgumentError):
    encoder(_inputs(1, _CONFIG.max_position_embeddings + 1,
                    _CONFIG.vocab_size))


def test_mlm_logits_match_head_applied_by_hand(encoder, weights):
  inputs = _inputs(3, 10, _CONFIG.vocab_size, seed=9, min_len=6)
  positions = np.array([[0, 3, 5], [1, 1, 2], [4, 0, 9]], np.int32)
  out = encoder.mlm(dict(inputs, masked_lm_positions=positions))
  assert out["mlm_logits"].shape == (3, 3, _CONFIG.vocab_size)
  assert out["mlm_logits"].dtype == tf.float32
  plain = encoder(inputs)
  for key in ("sequence_output", "pooled_output", "default"):
    np.testing.assert_allclose(out[key], plain[key], atol=1e-6)
  expected = numpy_mlm_logits(_CONFIG, weights,
                              out["sequence_output"].numpy(), positions)
  np.testing.assert_allclose(out["mlm_logits"], expected, atol=1e-4,
                             rtol=1e-5)


def test_mlm_decoder_is_the_word_embedding_variable(encoder):
  head = encoder.mlm.head
  assert head.word_embeddings.embeddings is \
      encoder.network.word_embeddings.embeddings


def test_no_mlm_weights_means_no_mlm_attribute(weights):
  backbone = {k: v for k, v in weights.items()
              if k not in wn.mlm_shapes(_CONFIG)}
  enc = encoder_lib.build_encoder(_CONFIG, backbone)
  assert not hasattr(enc, "mlm")


def test_without_pooler_pooled_output_is_cls_vector(weights):
  no_pooler = {k: v for k, v in weights.items()
               if k not in wn.pooler_shapes(_CONFIG)}
  enc = encoder_lib.build_encoder(_CONFIG, no_pooler)
  out = enc(_inputs(2, 5, _CONFIG.vocab_size))
  np.testing.assert_array_equal(out["pooled_output"],
                                out["sequence_output"].numpy()[:, 0])
  np.testing.assert_array_equal(out["default"], out["pooled_output"])


def test_layer_and_variable_names_follow_official_style(encoder):
  names = {v.name.split(":")[0] for v in encoder.variables}
  for expected in ("word_embeddings/embeddings",
                   "position_embedding/embeddings",
                   "type_embeddings/embeddings",
                   "embeddings/layer_norm/gamma",
                   "transformer/layer_1/self_attention/query/kernel",
                   "transformer/layer_0/self_attention/attention_output/bias",
                   "transformer/layer_0/attention_layer_norm/beta",
                   "transformer/layer_1/intermediate/kernel",
                   "transformer/layer_1/output/kernel",
                   "transformer/layer_1/output_layer_norm/gamma",
                   "pooler_transform/kernel", "mlm/transform/kernel",
                   "mlm/layer_norm/gamma", "mlm/output_bias"):
    assert expected in names, expected


def _gelu_chains(graph_def) -> list[str]:
  """The MatMul nodes whose output runs through BiasAdd and then exactly the op chain of `gelu_exact`:
  ((Erf(y * sqrt(1/2)) + 1) * 0.5) * y, with y the BiasAdd, each op feeding only the next one. This is the
  pattern that TF's oneDNN remapper folds into one inner product with a GELU post-op; whether a given CPU does
  it is measured by benchmarks/bench_fusion.py, not asserted here."""
  nodes = {n.name: n for n in graph_def.node}
  consumers: dict[str, list] = {}
  for n in graph_def.node:
    for i, name in enumerate(n.input):
      consumers.setdefault(name.split(":")[0].lstrip("^"), []).append((n, i))

  def const_value(name):
    node = nodes[name.split(":")[0]]
    return float(tf.make_ndarray(node.attr["value"].tensor)) if node.op == "Const" else None

  def only_consumer(node, op):
    users = consumers.get(node.name, [])
    return users[0][0] if len(users) == 1 and users[0][0].op == op else None

  chains = []
  for matmul in (n for n in graph_def.node if n.op == "MatMul"):
    bias = only_consumer(matmul, "BiasAdd")
    if bias is None:
      continue
    users = {n.op: n for n, _ in consumers.get(bias.name, [])}
    scale = users.get("Mul")
    if set(users) != {"Mul"} or len(consumers[bias.name]) != 2:
      continue
    scales = [n for n, _ in consumers[bias.name] if any(
        const_value(x) is not None and abs(const_value(x) - math.sqrt(0.5)) < 1e-6 for x in n.input)]
    if len(scales) != 1:
      continue
    scale = scales[0]
    erf = only_consumer(scale, "Erf")
    plus_one = erf and only_consumer(erf, "AddV2")
    half = plus_one and only_consumer(plus_one, "Mul")
    times_x = half and only_consumer(half, "Mul")
    if (times_x is not None and const_value(plus_one.input[1]) == 1.0 and const_value(half.input[1]) == 0.5
        and times_x.input[0] == half.name and times_x.input[1] == bias.name):
      chains.append(matmul.name)
  return chains


def test_exact_gelu_follows_its_intermediate_product_in_the_fusable_form(tmp_path):
  """Every layer's intermediate Dense is one 2-D MatMul + BiasAdd followed by gelu_exact's op chain, in the
  exported graph, before and after a save/load round trip (what TF then runs is hardware-dependent)."""
  config = BertConfig(**{**_CONFIG.to_dict(), "hidden_act": "gelu"})
  enc = encoder_lib.build_encoder(config, _weights(config))
  graph = enc.__call__.get_concrete_function().graph.as_graph_def()
  chains = _gelu_chains(graph)
  assert len(chains) == config.num_hidden_layers, chains
  tf.saved_model.save(enc, str(tmp_path / "encoder"))
  loaded = tf.saved_model.load(str(tmp_path / "encoder"))
  loaded_graph = loaded.__call__.concrete_functions[0].graph.as_graph_def()
  assert len(_gelu_chains(loaded_graph)) == config.num_hidden_layers
  relu = encoder_lib.build_encoder(BertConfig(**{**_CONFIG.to_dict(), "hidden_act": "relu"}), _weights(config))
  assert _gelu_chains(relu.__call__.get_concrete_function().graph.as_graph_def()) == []  # the check can fail
