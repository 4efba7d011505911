"""Activation functions selected by `BertConfig.hidden_act`."""

from typing import Callable

import tensorflow as tf


def gelu_exact(x: tf.Tensor) -> tf.Tensor:
  """GELU with the exact Gaussian CDF: 0.5 * x * (1 + erf(x / sqrt(2)))."""
  return tf.nn.gelu(x, approximate=False)


def gelu_tanh(x: tf.Tensor) -> tf.Tensor:
  """GELU with the tanh approximation (HF "gelu_new" / "gelu_pytorch_tanh")."""
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
