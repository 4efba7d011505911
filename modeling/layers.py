"""Small named building blocks of the BERT encoder, as `tf.Module`s.

Each block owns its variables, created from numpy arrays, and is named in the
style of tensorflow/models `official/nlp/modeling` (e.g.
"transformer/layer_0/self_attention/query/kernel"). Blocks are plain callables
with no tf.function of their own; the encoder wraps the whole forward pass.
"""

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

# Added to attention scores of padding keys: their softmax weight becomes 0.
MASK_ADDEND = -1e9


def _variable(value: np.ndarray, name: str) -> tf.Variable:
  return tf.Variable(np.asarray(value, np.float32), name=name, trainable=False)


class Dense(tf.Module):
  """Affine map, optionally followed by an element-wise activation: [..., in] -> [..., out] with kernel
  [in, out], bias [out]."""

  def __init__(self, kernel: np.ndarray, bias: np.ndarray, scope: str,
               activation: Optional[Callable[[tf.Tensor], tf.Tensor]] = None):
    super().__init__(name=scope.rsplit("/", 1)[-1])
    self.kernel = _variable(kernel, f"{scope}/kernel")
    self.bias = _variable(bias, f"{scope}/bias")
    self._activation = activation

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    # As one 2-D MatMul + BiasAdd (+ activation on the 2-D rows), which TF's oneDNN path fuses into one inner
    # product with post-ops (faster than an Einsum at BERT-base shapes: benchmarks/RESULTS.md), and the
    # activation then costs no separate pass over the [rows, intermediate] tensor.
    rows = tf.reshape(x, [-1, self.kernel.shape[0]])
    y = tf.nn.bias_add(tf.matmul(rows, self.kernel), self.bias)
    if self._activation is not None:
      y = self._activation(y)
    return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [self.kernel.shape[1]]], 0))


class LayerNorm(tf.Module):
  """Normalises the last axis [..., H] to zero mean and unit variance, then
  scales by gamma [H] and shifts by beta [H]."""

  def __init__(self, gamma: np.ndarray, beta: np.ndarray, eps: float,
               scope: str):
    super().__init__(name=scope.rsplit("/", 1)[-1])
    self.gamma = _variable(gamma, f"{scope}/gamma")
    self.beta = _variable(beta, f"{scope}/beta")
    self.eps = float(eps)

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + self.eps) * self.gamma + \
        self.beta


class Embedding(tf.Module):
  """A lookup table [rows, H]: int ids [...] -> vectors [..., H]."""

  def __init__(self, table: np.ndarray, scope: str):
    super().__init__(name=scope.rsplit("/", 1)[-1])
    self.embeddings = _variable(table, f"{scope}/embeddings")

  def __call__(self, ids: tf.Tensor) -> tf.Tensor:
    return tf.gather(self.embeddings, ids)


class SelfAttention(tf.Module):
  """Multi-head self-attention followed by its output projection.

  Call: x [B, T, H], additive mask [B, 1, 1, T] -> [B, T, H].
  """

  def __init__(self, query: Dense, key: Dense, value: Dense,
               attention_output: Dense, num_heads: int, name: str):
    super().__init__(name=name)
    self.query = query
    self.key = key
    self.value = value
    self.attention_output = attention_output
    self.num_heads = num_heads

  def _split_heads(self, x: tf.Tensor) -> tf.Tensor:
    """[B, T, H] -> [B, T, N, H/N]."""
    shape = tf.shape(x)
    head_size = x.shape[-1] // self.num_heads
    return tf.reshape(x, [shape[0], shape[1], self.num_heads, head_size])

  def __call__(self, x: tf.Tensor, mask_addend: tf.Tensor) -> tf.Tensor:
    q = self._split_heads(self.query(x))
    k = self._split_heads(self.key(x))
    v = self._split_heads(self.value(x))
    head_size = x.shape[-1] // self.num_heads
    scores = tf.einsum("bqnd,bknd->bnqk", q, k) * (1.0 / np.sqrt(head_size))
    probs = tf.nn.softmax(scores + mask_addend, axis=-1)
    context = tf.einsum("bnqk,bknd->bqnd", probs, v)
    shape = tf.shape(x)
    context = tf.reshape(context, [shape[0], shape[1], x.shape[-1]])
    return self.attention_output(context)


class TransformerLayer(tf.Module):
  """One post-LayerNorm BERT layer: [B, T, H], mask [B, 1, 1, T] -> [B, T, H].

  x = LN(x + attention(x)); x = LN(x + output(intermediate(x))), where `intermediate` is a Dense with the
  activation.
  """

  def __init__(self, self_attention: SelfAttention,
               attention_layer_norm: LayerNorm, intermediate: Dense,
               output: Dense, output_layer_norm: LayerNorm, name: str):
    super().__init__(name=name)
    self.self_attention = self_attention
    self.attention_layer_norm = attention_layer_norm
    self.intermediate = intermediate
    self.output = output
    self.output_layer_norm = output_layer_norm

  def __call__(self, x: tf.Tensor, mask_addend: tf.Tensor) -> tf.Tensor:
    x = self.attention_layer_norm(x + self.self_attention(x, mask_addend))
    return self.output_layer_norm(x + self.output(self.intermediate(x)))
