"""An independent numpy reference for BERT, used only by the parity tests.

Nothing here imports TensorFlow or the `modeling` package: the weights are read
straight from a Hugging Face `model.safetensors` file with `safetensors.numpy`,
and every step of the forward pass is spelled out in float64 numpy so that the
exported SavedModels can be checked against an implementation that shares no
code with them.

The module also has a brute-force, one-piece-at-a-time round-robin trimmer and
a packer in plain Python, the reference for `preprocessor.bert_pack_inputs`.

Conventions follow the Hugging Face checkpoint layout: `nn.Linear` weights are
stored as [out, in], LayerNorm parameters as `weight` (gamma) and `bias`
(beta), and a `BertForMaskedLM` checkpoint prefixes the encoder with `bert.`.
"""

import json
import math
import os

import numpy as np
from safetensors.numpy import load_file

# Exact erf applied element-wise; math.erf is correctly rounded to float64.
_ERF = np.vectorize(math.erf, otypes=[np.float64])

_ENCODER_PREFIX = "bert."


def erf(x):
  """Element-wise exact error function (float64)."""
  return _ERF(np.asarray(x, dtype=np.float64))


def gelu_exact(x):
  """gelu(x) = x * Phi(x), with Phi written through the exact erf."""
  x = np.asarray(x, dtype=np.float64)
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
  """The tanh approximation of gelu ("gelu_new", "gelu_pytorch_tanh")."""
  x = np.asarray(x, dtype=np.float64)
  inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
  return 0.5 * x * (1.0 + np.tanh(inner))


def relu(x):
  return np.maximum(np.asarray(x, dtype=np.float64), 0.0)


ACTIVATIONS = {
    "gelu": gelu_exact,
    "gelu_python": gelu_exact,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": relu,
    "tanh": np.tanh,
}


def activation(name):
  """Returns the numpy activation for a config `hidden_act` name."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"reference has no activation {name!r}") from None


def layer_norm(x, gamma, beta, eps):
  """LayerNorm over the last axis with the biased variance, as BERT does."""
  mean = x.mean(axis=-1, keepdims=True)
  centred = x - mean
  var = (centred * centred).mean(axis=-1, keepdims=True)
  return centred / np.sqrt(var + eps) * gamma + beta


def load_hf_checkpoint(model_dir):
  """Reads `config.json` and `model.safetensors` of a HF BERT checkpoint.

  Args:
    model_dir: directory with `config.json` and `model.safetensors`.

  Returns:
    (config dict, weights dict of float64 arrays). Encoder names have any
    `bert.` prefix removed; MLM-head names (`cls.…`) are kept as they are.
  """
  with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  raw = load_file(os.path.join(model_dir, "model.safetensors"))
  weights = {}
  for name, value in raw.items():
    if name.startswith(_ENCODER_PREFIX):
      name = name[len(_ENCODER_PREFIX):]
    weights[name] = np.asarray(value, dtype=np.float64)
  return config, weights


def read_vocab(vocab_file):
  """Returns the vocabulary as a list of tokens (id = line number)."""
  with open(vocab_file, encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f]


class BertReference:
  """A plain numpy BERT encoder (+ optional pooler and MLM head)."""

  def __init__(self, config, weights):
    self.config = dict(config)
    self.w = weights
    self.hidden_size = int(config["hidden_size"])
    self.num_layers = int(config["num_hidden_layers"])
    self.num_heads = int(config["num_attention_heads"])
    if self.hidden_size % self.num_heads:
      raise ValueError("hidden_size must be a multiple of num_attention_heads")
    self.head_size = self.hidden_size // self.num_heads
    self.eps = float(config.get("layer_norm_eps", 1e-12))
    self.act = activation(config.get("hidden_act", "gelu"))

  @classmethod
  def from_hf_dir(cls, model_dir):
    config, weights = load_hf_checkpoint(model_dir)
    return cls(config, weights)

  @property
  def has_pooler(self):
    return "pooler.dense.weight" in self.w

  @property
  def has_mlm_head(self):
    return "cls.predictions.transform.dense.weight" in self.w

  # -- building blocks -------------------------------------------------------

  def _dense(self, x, prefix):
    """x @ W^T + b for a HF Linear stored as [out, in]."""
    return x @ self.w[prefix + ".weight"].T + self.w[prefix + ".bias"]

  def _layer_norm(self, x, prefix, eps=None):
    return layer_norm(x, self.w[prefix + ".weight"], self.w[prefix + ".bias"],
                      self.eps if eps is None else eps)

  def embeddings(self, input_word_ids, input_type_ids):
    seq = input_word_ids.shape[1]
    word = self.w["embeddings.word_embeddings.weight"][input_word_ids]
    pos = self.w["embeddings.position_embeddings.weight"][:seq][None]
    typ = self.w["embeddings.token_type_embeddings.weight"][input_type_ids]
    return self._layer_norm(word + pos + typ, "embeddings.LayerNorm")

  def _split_heads(self, x):
    b, s, _ = x.shape
    return x.reshape(b, s, self.num_heads, self.head_size).transpose(0, 2, 1, 3)

  def attention(self, x, input_mask, prefix):
    """Multi-head self-attention; padded keys get probability exactly 0."""
    q = self._split_heads(self._dense(x, prefix + ".self.query"))
    k = self._split_heads(self._dense(x, prefix + ".self.key"))
    v = self._split_heads(self._dense(x, prefix + ".self.value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(self.head_size)
    keep = input_mask[:, None, None, :].astype(bool)
    scores = np.where(keep, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    out = self._dense(ctx, prefix + ".output.dense")
    return self._layer_norm(out + x, prefix + ".output.LayerNorm")

  def layer(self, x, input_mask, index):
    prefix = f"encoder.layer.{index}"
    x = self.attention(x, input_mask, prefix + ".attention")
    hidden = self.act(self._dense(x, prefix + ".intermediate.dense"))
    out = self._dense(hidden, prefix + ".output.dense")
    return self._layer_norm(out + x, prefix + ".output.LayerNorm")

  # -- public API ------------------------------------------------------------

  def forward(self, input_word_ids, input_mask=None, input_type_ids=None):
    """Runs the encoder.

    Args:
      input_word_ids: int array [batch, seq] (or [seq]).
      input_mask: 0/1 array like input_word_ids; all ones if None.
      input_type_ids: segment ids like input_word_ids; all zeros if None.

    Returns:
      dict with float64 `sequence_output` [batch, seq, H], `encoder_outputs`
      (list of the L layer outputs) and `pooled_output` [batch, H] (None when
      the checkpoint has no pooler).
    """
    ids = np.asarray(input_word_ids, dtype=np.int64)
    if ids.ndim == 1:
      ids = ids[None]
    mask = (np.ones_like(ids) if input_mask is None
            else np.asarray(input_mask, dtype=np.int64).reshape(ids.shape))
    types = (np.zeros_like(ids) if input_type_ids is None
             else np.asarray(input_type_ids, dtype=np.int64).reshape(ids.shape))
    x = self.embeddings(ids, types)
    layers = []
    for i in range(self.num_layers):
      x = self.layer(x, mask, i)
      layers.append(x)
    pooled = None
    if self.has_pooler:
      pooled = np.tanh(self._dense(x[:, 0], "pooler.dense"))
    return {"sequence_output": x, "encoder_outputs": layers,
            "pooled_output": pooled}

  def mlm_logits(self, sequence_output, masked_lm_positions):
    """The masked-LM head at the given positions.

    Args:
      sequence_output: float array [batch, seq, H] from `forward`.
      masked_lm_positions: int array [batch, P].

    Returns:
      float64 logits [batch, P, vocab_size].
    """
    positions = np.asarray(masked_lm_positions, dtype=np.int64)
    picked = np.take_along_axis(sequence_output, positions[:, :, None], axis=1)
    h = self.act(self._dense(picked, "cls.predictions.transform.dense"))
    h = self._layer_norm(h, "cls.predictions.transform.LayerNorm")
    decoder = self.w.get("cls.predictions.decoder.weight",
                         self.w["embeddings.word_embeddings.weight"])
    bias = self.w.get("cls.predictions.bias")
    if bias is None:
      bias = self.w["cls.predictions.decoder.bias"]
    return h @ decoder.T + bias


def masked_mean(sequence_output, input_mask):
  """Mean over the positions where input_mask is 1 (sentence-transformers)."""
  mask = np.asarray(input_mask, dtype=np.float64)[..., None]
  total = (np.asarray(sequence_output, dtype=np.float64) * mask).sum(axis=-2)
  return total / np.maximum(mask.sum(axis=-2), 1e-9)


def l2_normalize(x, eps=1e-12):
  x = np.asarray(x, dtype=np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


# -- trimming and packing ------------------------------------------------------


def round_robin_trim(segments, budget):
  """Keeps a prefix of each segment, handing out the budget one piece at a time.

  Segment 0 gets a piece, then segment 1, ..., then segment 0 again, skipping
  segments that have nothing left, until the budget or the pieces run out.

  Args:
    segments: list of lists (one list of pieces per segment).
    budget: total number of pieces that may be kept.

  Returns:
    list of the trimmed segments (new lists).
  """
  keep = [0] * len(segments)
  remaining = budget
  progressed = True
  while remaining > 0 and progressed:
    progressed = False
    for i, seg in enumerate(segments):
      if remaining == 0:
        break
      if keep[i] < len(seg):
        keep[i] += 1
        remaining -= 1
        progressed = True
  return [list(seg[:n]) for seg, n in zip(segments, keep)]


def pack(segments, seq_length, cls_id, sep_id, pad_id):
  """Lays out `[CLS] a.. [SEP] (b.. [SEP]) [PAD]..` for one example.

  Args:
    segments: list of 1 or more lists of wordpiece ids (already flattened).
    seq_length: output length.
    cls_id, sep_id, pad_id: special token ids.

  Returns:
    (input_word_ids, input_mask, input_type_ids), each a list of ints.
  """
  trimmed = round_robin_trim(segments, seq_length - (len(segments) + 1))
  words, types = [cls_id], [0]
  for segment_index, seg in enumerate(trimmed):
    words.extend(seg)
    words.append(sep_id)
    types.extend([segment_index] * (len(seg) + 1))
  mask = [1] * len(words)
  padding = seq_length - len(words)
  return (words + [pad_id] * padding, mask + [0] * padding,
          types + [0] * padding)


def pack_batch(batch_segments, seq_length, cls_id, sep_id, pad_id):
  """`pack` over a batch: batch_segments[i] is the list of segments of row i."""
  rows = [pack(segs, seq_length, cls_id, sep_id, pad_id)
          for segs in batch_segments]
  return tuple(np.array([row[k] for row in rows], dtype=np.int32)
               for k in range(3))
