"""Length buckets for encoder batches (pure Python, no Beam): each batch is padded only to its bucket's length and
sized by a token budget.

A record of n packed tokens goes to the smallest bucket length >= n (the last bucket is always --seq-length). A
batch holds records of one bucket, at most `max_batch_tokens // bucket` of them (and at most `max_batch_size`),
and the encoder sees it as int32 [rows, bucket]. Short texts therefore stop paying for padding up to
--seq-length, and the encoder sees a bounded set of sequence lengths (no surprises from shape-specialised kernels
or compilation caches). Padding never changes a record's vector: padded positions are masked out of attention and
pooling.

The default lengths are every length up to 64, then every 8th up to 128: sentence corpora are mostly short, and on
the benchmark corpus this leaves the fewest padded tokens of the bucket sets compared in benchmarks/RESULTS.md
("Throughput"), the Hugging Face recipe (sorting the whole corpus, padding each batch of 32 to its longest)
included. Many lengths cost no retracing: the encoder's signature has dynamic [batch, length] dimensions, and a new
batch shape costs nothing measurable after its first call. A bundle's leftover records (the partial batch of each
bucket) are pooled, sorted by length and cut again (`pack_sorted`), each batch padded to the bucket of its longest
record, so that many fine buckets do not turn into many small batches (on CPU, small batches run slower per
token).
"""
from __future__ import annotations

import bisect
from typing import NamedTuple, Optional, Sequence

from runtime.defaults import DEFAULT_BATCH_SIZE, DEFAULT_BUCKET_SPEC, DEFAULT_MAX_BATCH_TOKENS

# What one more encoder call costs, in padded tokens (a fixed cost per call, and small batches run slower per token:
# benchmarks/RESULTS.md): the price of cutting a batch in two.
BATCH_OVERHEAD_TOKENS = 256


class BucketSpec(NamedTuple):
  """How packed records are grouped into encoder batches (small and picklable)."""
  lengths: tuple[int, ...]  # ascending; the last one is the packed length (--seq-length)
  max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
  max_batch_size: int = DEFAULT_BATCH_SIZE

  def bucket(self, num_tokens: int) -> int:
    """The padded length for a record of `num_tokens` packed tokens: the smallest bucket length >= it."""
    i = bisect.bisect_left(self.lengths, num_tokens)
    if i == len(self.lengths):
      raise ValueError(f"{num_tokens} tokens exceed the longest bucket {self.lengths[-1]}")
    return self.lengths[i]

  def rows(self, bucket: int) -> int:
    """Records per batch of `bucket`: the token budget divided by the padded length (at least 1)."""
    return max(1, min(self.max_batch_size, self.max_batch_tokens // bucket))


def parse_bucket_lengths(value) -> tuple[int, ...]:
  """'16,32,64' or '2-64,72-128/8' (a-b: every length from a to b; a-b/s: every s-th) or a sequence of ints ->
  the sorted distinct lengths; raises ValueError on anything else."""
  if value is None:
    return DEFAULT_BUCKET_LENGTHS
  parts = value.split(",") if isinstance(value, str) else list(value)
  lengths = []
  for part in (str(p).strip() for p in parts):
    if part:
      lengths.extend(_parse_bucket_item(part, value))
  if not lengths or any(n <= 0 for n in lengths):
    raise ValueError(f"bucket lengths must be positive integers, got {value!r}")
  return tuple(sorted(set(lengths)))


def _parse_bucket_item(item: str, value) -> range:
  span, _, step = item.partition("/")
  first, dash, last = span.partition("-")
  try:
    start = int(first)
    stop = int(last) if dash else start
    stride = int(step) if step else 1
  except ValueError:
    raise ValueError(f"bucket lengths must be comma-separated integers or ranges a-b[/step], got {value!r}") from None
  if stride <= 0 or stop < start or (step and not dash):
    raise ValueError(f"bad bucket length range {item!r} in {value!r}")
  return range(start, stop + 1, stride)


DEFAULT_BUCKET_LENGTHS = parse_bucket_lengths(DEFAULT_BUCKET_SPEC)


def make_spec(seq_length: int, lengths: Optional[Sequence[int]] = None,
              max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, max_batch_size: int = DEFAULT_BATCH_SIZE) -> BucketSpec:
  """Buckets no longer than `seq_length`, with `seq_length` itself as the last one."""
  wanted = parse_bucket_lengths(lengths) if lengths is not None else DEFAULT_BUCKET_LENGTHS
  kept = tuple(n for n in wanted if n < seq_length) + (seq_length,)
  if max_batch_tokens <= 0 or max_batch_size <= 0:
    raise ValueError("max_batch_tokens and max_batch_size must be positive")
  return BucketSpec(kept, int(max_batch_tokens), int(max_batch_size))


def padded_length(spec: Optional[BucketSpec], longest: int) -> int:
  """The length a batch whose longest record has `longest` tokens is padded to (no spec: `longest`)."""
  return longest if spec is None else spec.bucket(longest)


def pack_sorted(elements: Sequence, spec: BucketSpec,
                overhead_tokens: int = BATCH_OVERHEAD_TOKENS) -> list[tuple[int, list]]:
  """Cuts records, sorted by length, into batches: [(padded length, batch)], shortest first.

  Each batch is padded to the bucket of its longest record and holds at most `spec.rows` of that bucket. The cuts
  minimise the padded tokens plus `overhead_tokens` per batch (a dynamic program over the sorted records, O(n x
  rows)): one long record does not drag 63 short ones up to its length, and a few stragglers do not become a batch
  of their own unless that saves more than a call's overhead.
  """
  ordered = sorted(elements, key=lambda e: e.num_tokens)
  cost = [0] + [None] * len(ordered)  # cost[j]: the cheapest batching of the first j records
  start = [0] * (len(ordered) + 1)  # start[j]: where the last batch of that batching starts
  for j in range(1, len(ordered) + 1):
    length = spec.bucket(ordered[j - 1].num_tokens)
    for i in range(max(0, j - spec.rows(length)), j):
      candidate = cost[i] + (j - i) * length + overhead_tokens
      if cost[j] is None or candidate < cost[j]:
        cost[j], start[j] = candidate, i
  out, j = [], len(ordered)
  while j > 0:
    i = start[j]
    out.append((spec.bucket(ordered[j - 1].num_tokens), ordered[i:j]))
    j = i
  return out[::-1]
