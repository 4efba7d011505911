"""Activation functions selected by `BertConfig.hidden_act`.

The exact GELU is spelled op by op in the form that TF's grappler remapper recognises right after a 2-D
MatMul + BiasAdd (on x86 builds with oneDNN): it then runs as one fused inner product with a GELU post-op, in
fp32 and in bf16. `tf.nn.gelu(approximate=False)` traces to another op sequence (Erfc of the negated input) that
is not fused there. Keep the operand order: the remapper's patterns are order-sensitive; a test checks that the
fusion happens.
"""

import math
from typing import Callable

import tensorflow as tf

_SQRT_HALF = math.sqrt(0.5)


def gelu_exact(x: tf.Tensor) -> tf.Tensor:
  """GELU with the exact Gaussian CDF: 0.5 * x * (1 + erf(x / sqrt(2)))."""
  return ((tf.math.erf(x * _SQRT_HALF) + 1.0) * 0.5) * x


def gelu_tanh(x: tf.Tensor) -> tf.Tensor:
  """GELU with the tanh approximation (HF "gelu_new" / "gelu_pytorch_tanh"). `tf.nn.gelu`'s form is fused
  after MatMul + BiasAdd in fp32; in bf16 it is not (TF's bf16 rewrite keeps Tanh in fp32)."""
  return tf.nn.gelu(x, approximate=True)


_ACTIVATIONS = {
    "gelu": gelu_exact,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": tf.nn.relu,
}


def get_activation(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
  """Returns the elementwise activation for a (validated) config name."""
  try:
    return _ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unsupported activation {name!r}") from None
