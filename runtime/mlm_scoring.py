"""MLM scores: the pseudo-log-likelihood (PLL) of each packed record under the encoder's masked-LM head.

Salazar et al. (2020), "Masked Language Model Scoring": for every real token i of a record (not [CLS], [SEP] or
padding) a copy of the record has token i replaced by [MASK], and the score of i is
log_softmax(mlm_logits)[true id] at position i; PLL = the sum over scored tokens, and the pseudo-perplexity is
exp(-PLL / scored tokens). With `whole_word` (PLL-word-l2r, Kauf & Ivanova 2023) the copy that scores piece i also
masks the later pieces of i's word (see `runtime.mlm_vocab` for how words are found). A truncated record is
scored on its packed tokens only.

Efficiency: the copies of all records of a call are pooled, sorted by length and cut into batches of at most
`max_tokens` padded tokens (`runtime.mlm_plan`), and the encoder's `.mlm` is called with `masked_lm_positions`
[B, 1] holding the scored position, so vocabulary logits are computed for one position per copy only.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from runtime import mlm_plan
from runtime.defaults import DEFAULT_MLM_MAX_TOKENS
from formats.records import EncoderInput
from runtime.saved_models import LoadedModel, load_encoder

DEFAULT_MAX_TOKENS = DEFAULT_MLM_MAX_TOKENS
DEFAULT_MAX_COPIES = 512


class MissingMlmHeadError(ValueError):
  """The encoder SavedModel has no usable `.mlm` subobject, so MLM scores cannot be computed."""


class MlmScore(NamedTuple):
  """The MLM score of one record."""
  pll: float  # sum of the scored tokens' log-probabilities (natural log); 0.0 when nothing was scored
  scored_tokens: int
  pseudo_perplexity: Optional[float]  # exp(-pll / scored_tokens); None when nothing was scored
  token_scores: Optional[np.ndarray] = None  # float32 [num_tokens], NaN where not scored ([CLS]/[SEP]); per_token


def _model_parts(model) -> tuple[Any, Optional[str]]:
  """(SavedModel object, device or None) of a LoadedModel or a bare loaded SavedModel."""
  if isinstance(model, LoadedModel):
    return model.obj, model.device
  return model, None


def _stack(arrays: Sequence[np.ndarray], width: int) -> np.ndarray:
  """int32 [R, width]: the arrays left-aligned, zero-padded."""
  out = np.zeros([len(arrays), width], np.int32)
  for i, a in enumerate(arrays):
    out[i, :len(a)] = a[:width]
  return out


def _score_copies(mlm, device: Optional[str], ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray,
                  positions: np.ndarray, true_ids: np.ndarray) -> np.ndarray:
  """One `.mlm` call: log p(true id) at one position per copy.

  Args:
    mlm: the encoder's `.mlm` callable.
    device: TF device to run on, or None for TF's default placement.
    ids, mask, type_ids: int32 [B, T] masked copies.
    positions: int32 [B] the scored position of each copy.
    true_ids: int32 [B] the original id at that position.

  Returns:
    float32 [B] log-probabilities.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with tf.device(device) if device else contextlib.nullcontext():
    outputs = mlm({
        "input_word_ids": tf.constant(ids, tf.int32),
        "input_mask": tf.constant(mask, tf.int32),
        "input_type_ids": tf.constant(type_ids, tf.int32),
        "masked_lm_positions": tf.constant(positions[:, None], tf.int32),
    })
    logits = outputs["mlm_logits"][:, 0, :]  # [B, V]
    picked = tf.gather(logits, tf.constant(true_ids[:, None], tf.int32), batch_dims=1)[:, 0]
    return (picked - tf.reduce_logsumexp(logits, axis=-1)).numpy()


def score_records(model, inputs: Sequence[EncoderInput], special: Mapping[str, int], *, whole_word: bool = False,
                  continuation: Optional[np.ndarray] = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                  max_copies: int = DEFAULT_MAX_COPIES, per_token: bool = False) -> list[MlmScore]:
  """Scores packed records with the encoder's masked-LM head, batching the masked copies of all of them.

  Args:
    model: a `LoadedModel` from `load_encoder`, or a loaded encoder SavedModel; it must have `.mlm`.
    inputs: packed records (any mix of lengths, single texts and pairs).
    special: the preprocessor's special tokens (`mlm_vocab.load_special_tokens`); uses `mask_id` and
      `end_of_segment_id`.
    whole_word: PLL-word-l2r: also mask the later pieces of the scored piece's word.
    continuation: bool [V] from `mlm_vocab.load_continuation_table`; required with `whole_word`.
    max_tokens: padded tokens (copies x padded length) per `.mlm` call; a copy longer than this runs alone.
    max_copies: copies per `.mlm` call at most (bounds the float32 [copies, V] logits).
    per_token: also return each record's token scores.

  Returns:
    One MlmScore per input, in order.

  Raises:
    ValueError: `whole_word` without `continuation`, or an id outside it.
    FloatingPointError: the model produced a non-finite score.
    Whatever the model raises (callers bisect).
  """
  if whole_word and continuation is None:
    raise ValueError("whole_word scoring needs the vocab's continuation table (mlm_vocab.load_continuation_table)")
  if not inputs:
    return []
  obj, device = _model_parts(model)
  mlm = getattr(obj, "mlm", None)
  if mlm is None:
    raise MissingMlmHeadError("the encoder has no .mlm subobject")
  mask_id, sep_id = int(special["mask_id"]), int(special["end_of_segment_id"])
  lengths = [int(e.num_tokens) for e in inputs]
  plan = mlm_plan.plan_copies([e.input_word_ids for e in inputs], lengths, sep_id,
                              continuation=continuation if whole_word else None)
  width = max(max(len(e.input_word_ids) for e in inputs), max(lengths))
  word_ids = _stack([e.input_word_ids for e in inputs], width)
  input_mask = _stack([e.input_mask for e in inputs], width)
  type_ids = _stack([e.input_type_ids for e in inputs], width)

  scores = np.empty([plan.size], np.float32)
  for batch in mlm_plan.token_budget_batches(plan.length, max_tokens, max_copies):
    rows, positions, ends = plan.record[batch], plan.position[batch], plan.mask_end[batch]
    length = int(plan.length[batch].max())
    ids = word_ids[rows, :length]  # fancy indexing copies
    true_ids = ids[np.arange(batch.size), positions]
    columns = np.arange(length)[None, :]
    ids[(columns >= positions[:, None]) & (columns < ends[:, None])] = mask_id
    scores[batch] = _score_copies(mlm, device, ids, input_mask[rows, :length], type_ids[rows, :length],
                                  positions, true_ids)
  if not np.all(np.isfinite(scores)):
    raise FloatingPointError("the encoder's .mlm produced non-finite log-probabilities")

  results = []
  bounds = np.searchsorted(plan.record, np.arange(len(inputs) + 1))  # plan.record is sorted (record-major)
  for r, n in enumerate(lengths):
    lo, hi = bounds[r], bounds[r + 1]
    count = int(hi - lo)
    pll = float(np.sum(scores[lo:hi], dtype=np.float64))
    token_scores = None
    if per_token:
      token_scores = np.full([n], np.nan, np.float32)
      token_scores[plan.position[lo:hi]] = scores[lo:hi]
    results.append(MlmScore(pll=pll, scored_tokens=count,
                            pseudo_perplexity=float(np.exp(-pll / count)) if count else None,
                            token_scores=token_scores))
  return results


def _missing_message(where: str, detail: str) -> str:
  return (f"--mlm-scores needs an encoder with a masked-LM head, but the encoder {where} {detail}. Sentence-"
          "embedding models (like the default all-MiniLM-L6-v2) ship without one. Use an encoder exported from a "
          "checkpoint that has MLM weights (e.g. `bert-embed export --from hf:CHECKPOINT_DIR --output MODEL_DIR` "
          "of a BertForMaskedLM checkpoint) or a TF Hub BERT encoder with `.mlm` "
          "(e.g. bert_en_cased_L-12_H-768_A-12/4).")


def check_has_mlm(encoder) -> None:
  """Fails early, with what to do, when an encoder cannot produce MLM scores.

  Args:
    encoder: the encoder SavedModel's path, a `LoadedModel`, or a loaded SavedModel. A path whose bert-embed export
      metadata says `has_mlm: false` is rejected without loading; otherwise `.mlm` is looked up and probed with a
      3-token input and `masked_lm_positions` [1, 1], which must give `mlm_logits` [1, 1, V].

  Raises:
    MissingMlmHeadError: no `.mlm`, or it does not follow the TF Hub interface.
  """
  where = encoder if isinstance(encoder, str) else getattr(encoder, "path", "given")
  if isinstance(encoder, str):
    from modeling.export_metadata import read_export_metadata  # pylint: disable=import-outside-toplevel
    metadata = read_export_metadata(encoder)
    if metadata is not None and not metadata.get("has_mlm", True):
      raise MissingMlmHeadError(_missing_message(where, "was exported without one (has_mlm: false)"))
    encoder = load_encoder(encoder)  # the process-level cache: the launcher has just loaded it
  obj, device = _model_parts(encoder)
  mlm = getattr(obj, "mlm", None)
  if mlm is None or not callable(mlm):
    raise MissingMlmHeadError(_missing_message(where, "has no `.mlm` subobject"))
  ones = np.ones([1, 3], np.int32)
  try:
    _score_copies(mlm, device, ones, ones, np.zeros_like(ones), np.array([1], np.int32), np.array([1], np.int32))
  except Exception as e:  # pylint: disable=broad-except
    raise MissingMlmHeadError(_missing_message(
        where, f"has a `.mlm` that does not take `masked_lm_positions` and return `mlm_logits` [B, P, V] "
        f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})")) from e
