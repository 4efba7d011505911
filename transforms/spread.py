"""Records spread over the workers before the encoder, so that one large file is encoded by every worker.

Reading streams each file whole in one DoFn, and everything after it (tokenizing, encoding, writing) is fused with
the read: without a shuffle in between, the worker that read a file encodes all of its records. `spread_records`
adds a Reshuffle (random keys): it cuts that fusion, and the runner hands the records to all its workers. The
elements are the same, so ids and outputs do not change; only which worker encodes which record does.

The shuffle is skipped where it cannot help: on the DirectRunner with one worker (its default), where it would only
hold every record in the runner's memory between reading and encoding.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions


def single_worker(pipeline: beam.Pipeline) -> bool:
  """Whether the pipeline runs on the DirectRunner with exactly one worker (`--direct_num_workers=1`, the default)."""
  if "DirectRunner" not in type(pipeline.runner).__name__:
    return False
  return pipeline.options.view_as(DirectOptions).direct_num_workers == 1


def spread_records(pcoll, label: str = "SpreadRecords"):
  """`pcoll` redistributed over the workers (a Reshuffle under `label`), or `pcoll` itself on a single worker."""
  if single_worker(pcoll.pipeline):
    return pcoll
  return pcoll | label >> beam.Reshuffle()
