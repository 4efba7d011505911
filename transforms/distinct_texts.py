"""Each distinct text embedded once: records with identical (text, pair) share one encoder call."""
from __future__ import annotations

import apache_beam as beam

from transforms.embed import EmbedResult
from transforms.names import DEAD_LETTER, NAMESPACE
from formats.records import TextRecord, text_sha256

FANOUT = "fanout"


def _order_key(r: TextRecord):
  return (r.source, r.position, r.id)


class _SplitRepresentatives(beam.DoFn):
  """(hash, records) -> the first record (by file, position) to encode; (its id, the others) to fan out to."""

  def __init__(self):
    self._duplicates = beam.metrics.Metrics.counter(NAMESPACE, "records_deduplicated")

  def process(self, element):
    _, records = element
    records = sorted(records, key=_order_key)
    yield records[0]
    if len(records) > 1:
      self._duplicates.inc(len(records) - 1)
      yield beam.pvalue.TaggedOutput(FANOUT, (records[0].id, records[1:]))


def _fan_out(element):
  """(rep id, {embeddings, dead_letters, others}) -> one result per record of the group, each with its own id."""
  _, group = element
  others = [r for rs in group["others"] for r in rs]
  for emb in group["embeddings"]:
    yield emb
    for r in others:
      if emb.parent_id is None:
        yield emb._replace(id=r.id, source=r.source)
      else:  # a window of a long text: <id>#<k>
        yield emb._replace(id=r.id + emb.id[len(emb.parent_id):], parent_id=r.id, source=r.source)
  for dead in group["dead_letters"]:
    yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead)
    for r in others:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead._replace(id=r.id, source=r.source))


class EmbedDistinctTexts(beam.PTransform):
  """Wraps an EmbedTexts: groups records by (text, pair), embeds one per group and fans the result out to every id.

  The returned EmbedResult's `encoded` holds what went through the model (one per distinct text), `embeddings` one
  record per input id. Costs one shuffle of the records and one of the results.
  """

  def __init__(self, embed: beam.PTransform):
    super().__init__()
    self._embed = embed

  def expand(self, records) -> EmbedResult:
    split = (records
             | "KeyByText" >> beam.Map(lambda r: (text_sha256(r.text, r.text_pair), r))
             | "GroupByText" >> beam.GroupByKey()
             | "SplitRepresentatives" >> beam.ParDo(_SplitRepresentatives()).with_outputs(FANOUT, main="reps"))
    embedded = split.reps | "EmbedRepresentatives" >> self._embed
    joined = ({"embeddings": embedded.embeddings | "KeyEmbeddings" >> beam.Map(lambda e: (e.parent_id or e.id, e)),
               "dead_letters": embedded.dead_letters | "KeyDeadLetters" >> beam.Map(lambda d: (d.id, d)),
               "others": split[FANOUT]}
              | "JoinDuplicates" >> beam.CoGroupByKey()
              | "FanOut" >> beam.FlatMap(_fan_out).with_outputs(DEAD_LETTER, main="embeddings"))
    return EmbedResult(joined.embeddings, joined[DEAD_LETTER], embedded.embeddings, embedded.precision_used)
