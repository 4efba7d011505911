"""Ordering steps that have no data dependency: a pass-through that waits for another PCollection."""
from __future__ import annotations

import apache_beam as beam


class After(beam.PTransform):
  """Passes its input through once `before` (a PCollection) is complete: sequences steps (writes after a
  clean-up, store writes after a new collection exists).

  `before` is a side input of the pass-through, so no element reaches the next step before it is computed, on
  any runner.
  """

  def __init__(self, before):
    super().__init__()
    self._before = before

  def expand(self, pcoll):
    wait = beam.Map(lambda element, unused_before: element, beam.pvalue.AsList(self._before))
    if pcoll.element_type is not None:
      wait = wait.with_output_types(pcoll.element_type)  # the same coder as without the wait
    return pcoll | "Wait" >> wait

