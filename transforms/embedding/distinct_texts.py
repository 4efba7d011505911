"""Each distinct text embedded once: records with identical (text, pair) share one encoder call."""
from __future__ import annotations

import apache_beam as beam

from transforms.embedding.embed import EmbedResult
from transforms.names import DEAD_LETTER, NAMESPACE
from formats.records import TextRecord, text_sha256

FANOUT = "fanout"


def _order_key(r: TextRecord):
  return (r.source, r.position, r.id)


class _SplitRepresentatives(beam.DoFn):
  """(text key, records) -> the first record (by file, position), under the text key as its id, to encode; and
  (text key, [(id, source)] of every record of the group) to fan the result out to.

  The representative is encoded under the group's key, not under its own id: ids need not be unique
  (--on-duplicate-id keep), and the key ties each result (and each dead letter) to its group alone.
  """

  def __init__(self):
    self._duplicates = beam.metrics.Metrics.counter(NAMESPACE, "records_deduplicated")

  def process(self, element):
    key, records = element
    records = sorted(records, key=_order_key)
    yield records[0]._replace(id=key)
    if len(records) > 1:
      self._duplicates.inc(len(records) - 1)
    yield beam.pvalue.TaggedOutput(FANOUT, (key, [(r.id, r.source) for r in records]))


def _fan_out(element):
  """(text key, {embeddings, dead_letters, members}) -> one result per record of the group, under its own id."""
  key, group = element
  members = [m for ms in group["members"] for m in ms]
  for emb in group["embeddings"]:
    for record_id, source in members:
      if emb.parent_id is None:
        yield emb._replace(id=record_id, source=source)
      else:  # a window of a long text: <key>#<k> -> <id>#<k>
        yield emb._replace(id=record_id + emb.id[len(key):], parent_id=record_id, source=source)
  for dead in group["dead_letters"]:
    for record_id, source in members:  # a window's reason names the window and its text by the key
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead._replace(
          id=record_id, source=source, reason=dead.reason.replace(key, record_id)))


class EmbedDistinctTexts(beam.PTransform):
  """Wraps an EmbedTexts: groups records by (text, pair), embeds one per group and fans the result out to every id.

  The returned EmbedResult's `encoded` holds what went through the model (one per distinct text, or per window of
  one), `embeddings` one record per input record. Costs one shuffle of the records and one of the results.
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
               "members": split[FANOUT]}
              | "JoinDuplicates" >> beam.CoGroupByKey()
              | "FanOut" >> beam.FlatMap(_fan_out).with_outputs(DEAD_LETTER, main="embeddings"))
    encoded = embedded.encoded if embedded.encoded is not None else embedded.embeddings
    return EmbedResult(joined.embeddings, joined[DEAD_LETTER], encoded, embedded.precision_used)
