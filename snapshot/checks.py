"""The run's checks, before anything is committed: read == written + dead_lettered, and dead-lettered / read <=
--max-dead-letter-fraction. A failed check raises RunCheckError, in one line (snapshot/commit.py runs them first)."""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from formats.records import DeadLetter
from runtime.defaults import DEFAULT_MAX_DEAD_LETTER_FRACTION

DEAD_LETTER_REASONS = "dead_letter_reasons"
_REASON_CHARS = 120


class RunCheckError(RuntimeError):
  """A finished run that must not replace the earlier output: too many dead letters, or the counts do not balance."""


@dataclasses.dataclass(frozen=True)
class RunChecks:
  """What a run must satisfy before it is committed. max_dead_letter_fraction 1 turns that check off."""
  max_dead_letter_fraction: float = DEFAULT_MAX_DEAD_LETTER_FRACTION

  def __post_init__(self):
    if not 0.0 <= self.max_dead_letter_fraction <= 1.0:
      raise ValueError(f"max_dead_letter_fraction must be in [0, 1], got {self.max_dead_letter_fraction}")


def dead_letter_reason(dead_letter: DeadLetter) -> str:
  """The class of a dead letter's reason: its stage and reason, numbers masked (`line 7` and `line 9` are alike)."""
  reason = re.sub(r"\d+", "N", " ".join(dead_letter.reason.split()))
  return f"{dead_letter.stage}: {reason[:_REASON_CHARS]}"


def reason_and_id(dead_letter: DeadLetter) -> tuple[str, str]:
  return dead_letter_reason(dead_letter), dead_letter.id


def check_run(counts: Mapping[str, int], reasons: Mapping[str, Sequence], checks: RunChecks, where: str) -> None:
  """Raises RunCheckError, in one line, when the counts do not balance or too many records were dead-lettered.

  `reasons`: {reason class: [occurrences, example id]}; `where` ends the message (what was kept).
  """
  read, written, dead = (int(counts.get(name, 0)) for name in ("read", "written", "dead_lettered"))
  if read != written + dead:
    raise RunCheckError(f"the counts do not balance: {read} records read, but {written} written + {dead} "
                        f"dead-lettered = {written + dead}; {where}")
  fraction = dead / read if read else 0.0
  if fraction > checks.max_dead_letter_fraction:
    reason, (n, example) = max(reasons.items(), key=lambda kv: (kv[1][0], kv[0])) if reasons else ("?", (0, "?"))
    raise RunCheckError(f"{dead} of {read} records dead-lettered ({fraction:.1%}), above "
                        f"--max-dead-letter-fraction {checks.max_dead_letter_fraction:g}; most common reason "
                        f"({n} record{'' if n == 1 else 's'}): {reason}; e.g. id {example!r}; {where}")
