"""The BERT encoder and its masked-LM head, with the TF Hub call interface.

`build_encoder(config, weights)` returns the root `tf.Module` of the encoder
SavedModel: callable on {input_word_ids, input_mask, input_type_ids} (int32
[B, T]) and, when MLM weights are given, with an `.mlm` sub-module that also
takes `masked_lm_positions` (int32 [B, P]).
"""

import logging
from typing import Dict, Mapping

import numpy as np
import tensorflow as tf

from modeling import weight_names as wn
from modeling.activations import get_activation
from modeling.config import BertConfig
from modeling.layers import (MASK_ADDEND, Dense, Embedding, LayerNorm,
                             SelfAttention, TransformerLayer)

_IDS_SPEC = tf.TensorSpec([None, None], tf.int32)
ENCODER_INPUT_SPEC = {
    "input_word_ids": _IDS_SPEC,
    "input_mask": _IDS_SPEC,
    "input_type_ids": _IDS_SPEC,
}
MLM_INPUT_SPEC = {**ENCODER_INPUT_SPEC, "masked_lm_positions": _IDS_SPEC}


def _dense(weights, prefix, scope, activation=None):
  return Dense(weights[f"{prefix}/kernel"], weights[f"{prefix}/bias"], scope,
               activation)


def _layer_norm(weights, prefix, eps, scope):
  return LayerNorm(weights[f"{prefix}/gamma"], weights[f"{prefix}/beta"], eps,
                   scope)


class BertNetwork(tf.Module):
  """Embeddings, transformer stack and pooler; no tf.function of its own.

  Call: dict of int32 [B, T] -> dict with `sequence_output` [B, T, H],
  `pooled_output` [B, H], `encoder_outputs` (L tensors [B, T, H]), all float32.
  """

  def __init__(self, config: BertConfig, weights: Mapping[str, np.ndarray]):
    super().__init__(name="bert_network")
    self.config = config
    eps = config.layer_norm_eps
    self.word_embeddings = Embedding(weights[wn.WORD_EMBEDDINGS],
                                     "word_embeddings")
    self.position_embedding = Embedding(weights[wn.POSITION_EMBEDDINGS],
                                        "position_embedding")
    self.type_embeddings = Embedding(weights[wn.TOKEN_TYPE_EMBEDDINGS],
                                     "type_embeddings")
    self.embeddings_layer_norm = _layer_norm(
        weights, wn.EMBEDDINGS_LAYER_NORM, eps, "embeddings/layer_norm")
    activation = get_activation(config.hidden_act)
    self.transformer_layers = []
    for n in range(config.num_hidden_layers):
      src, dst = wn.layer_prefix(n), f"transformer/layer_{n}"
      attention = SelfAttention(
          query=_dense(weights, f"{src}/attention/self/query",
                       f"{dst}/self_attention/query"),
          key=_dense(weights, f"{src}/attention/self/key",
                     f"{dst}/self_attention/key"),
          value=_dense(weights, f"{src}/attention/self/value",
                       f"{dst}/self_attention/value"),
          attention_output=_dense(weights, f"{src}/attention/output/dense",
                                  f"{dst}/self_attention/attention_output"),
          num_heads=config.num_attention_heads,
          name="self_attention")
      self.transformer_layers.append(TransformerLayer(
          self_attention=attention,
          attention_layer_norm=_layer_norm(
              weights, f"{src}/attention/output/LayerNorm", eps,
              f"{dst}/attention_layer_norm"),
          intermediate=_dense(weights, f"{src}/intermediate/dense",
                              f"{dst}/intermediate", activation),
          output=_dense(weights, f"{src}/output/dense", f"{dst}/output"),
          output_layer_norm=_layer_norm(
              weights, f"{src}/output/LayerNorm", eps,
              f"{dst}/output_layer_norm"),
          name=f"layer_{n}"))
    self.has_pooler = f"{wn.POOLER_DENSE}/kernel" in weights
    if self.has_pooler:
      self.pooler_transform = _dense(weights, wn.POOLER_DENSE,
                                     "pooler_transform")

  def __call__(self, inputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    word_ids = inputs["input_word_ids"]
    seq_len = tf.shape(word_ids)[1]
    tf.debugging.assert_less_equal(
        seq_len, self.config.max_position_embeddings,
        message="sequence longer than max_position_embeddings")
    positions = self.position_embedding.embeddings[:seq_len]  # [T, H]
    x = (self.word_embeddings(word_ids) + positions[tf.newaxis]
         + self.type_embeddings(inputs["input_type_ids"]))
    x = self.embeddings_layer_norm(x)
    mask = tf.cast(inputs["input_mask"], x.dtype)  # [B, T]
    mask_addend = ((1.0 - mask) * MASK_ADDEND)[:, tf.newaxis, tf.newaxis, :]
    encoder_outputs = []
    for layer in self.transformer_layers:
      x = layer(x, mask_addend)
      encoder_outputs.append(x)
    first_token = x[:, 0, :]
    if self.has_pooler:
      pooled = tf.tanh(self.pooler_transform(first_token))
    else:
      pooled = first_token
    return {
        "sequence_output": x,
        "pooled_output": pooled,
        "encoder_outputs": encoder_outputs,
        "default": pooled,
    }


class MaskedLMHead(tf.Module):
  """Masked-LM head: hidden states at positions -> vocabulary logits.

  Call: sequence_output [B, T, H], positions int32 [B, P] -> logits [B, P, V].
  The decoder is the word-embedding table transposed (the same variable).
  """

  def __init__(self, config: BertConfig, weights: Mapping[str, np.ndarray],
               word_embeddings: Embedding):
    super().__init__(name="mlm")
    self.transform = _dense(weights, wn.MLM_TRANSFORM_DENSE, "mlm/transform",
                            get_activation(config.hidden_act))
    self.layer_norm = _layer_norm(weights, wn.MLM_TRANSFORM_LAYER_NORM,
                                  config.layer_norm_eps, "mlm/layer_norm")
    self.output_bias = tf.Variable(
        np.asarray(weights[wn.MLM_OUTPUT_BIAS], np.float32),
        name="mlm/output_bias", trainable=False)
    self.word_embeddings = word_embeddings

  def __call__(self, sequence_output: tf.Tensor,
               positions: tf.Tensor) -> tf.Tensor:
    gathered = tf.gather(sequence_output, positions, batch_dims=1)  # [B,P,H]
    x = self.layer_norm(self.transform(gathered))
    logits = tf.einsum("bph,vh->bpv", x, self.word_embeddings.embeddings)
    return logits + self.output_bias


class MaskedLM(tf.Module):
  """The `.mlm` sub-module: encoder outputs plus `mlm_logits` [B, P, V]."""

  def __init__(self, network: BertNetwork, head: MaskedLMHead):
    super().__init__(name="mlm")
    self.network = network
    self.head = head

  @tf.function(input_signature=[MLM_INPUT_SPEC])
  def __call__(self, inputs):
    outputs = self.network(inputs)
    outputs["mlm_logits"] = self.head(outputs["sequence_output"],
                                      inputs["masked_lm_positions"])
    return outputs


class BertEncoder(tf.Module):
  """Root of the encoder SavedModel.

  Call: {input_word_ids, input_mask, input_type_ids} int32 [B, T], T <=
  max_position_embeddings -> {pooled_output [B, H], sequence_output [B, T, H],
  encoder_outputs: L x [B, T, H], default [B, H]} float32.
  """

  def __init__(self, network: BertNetwork):
    super().__init__(name="bert_encoder")
    self.network = network

  @tf.function(input_signature=[ENCODER_INPUT_SPEC])
  def __call__(self, inputs):
    return self.network(inputs)

  @tf.function(input_signature=[_IDS_SPEC] * 3)
  def serving_default(self, input_word_ids, input_mask, input_type_ids):
    """The `serving_default` signature: keyword inputs, flat outputs
    (`encoder_outputs_<n>` instead of a list). It calls `__call__` rather
    than the network, so the SavedModel holds the network's graph once (a
    call node here), which halves the graph a load rebuilds."""
    outputs = self.__call__({"input_word_ids": input_word_ids,
                             "input_mask": input_mask,
                             "input_type_ids": input_type_ids})
    flat = {k: outputs[k] for k in ("pooled_output", "sequence_output",
                                    "default")}
    for n, layer_output in enumerate(outputs["encoder_outputs"]):
      flat[f"encoder_outputs_{n}"] = layer_output
    return flat


def build_encoder(config: BertConfig,
                  weights: Mapping[str, np.ndarray]) -> BertEncoder:
  """Builds the encoder root module from canonical weights.

  Args:
    config: the architecture.
    weights: {canonical TF1 name: float32 array}, already validated with
      `weight_names.validate`. A pooler and an MLM head are optional; without
      the pooler `pooled_output` is the [CLS] vector of `sequence_output`.

  Returns:
    A `BertEncoder`; it has an `.mlm` attribute iff the MLM weights are given.
  """
  network = BertNetwork(config, weights)
  encoder = BertEncoder(network)
  if wn.MLM_OUTPUT_BIAS in weights:
    encoder.mlm = MaskedLM(network, MaskedLMHead(config, weights,
                                                 network.word_embeddings))
  else:
    logging.debug("no MLM head weights: the encoder has no .mlm")
  return encoder
