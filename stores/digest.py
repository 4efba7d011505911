"""An order-independent digest of a set of (record id, text_sha256) pairs: what the verify after a store commit
compares first, so that neither side has to ship every id to the other.

Each pair hashes to a signed 64-bit integer: the first 8 bytes (big-endian, two's complement) of the SHA-256 of
`id + "\\n" + text_sha256` in UTF-8 (an absent text_sha256 as ""; a text_sha256 is hex, so no two pairs give one
string). The digest is the number of pairs and the exact sum of their hashes (a Python int, no overflow): sums of
parts add up to the whole's, in any order, so a job can sum per bundle and the store in SQL. Two sets with the same
digest are taken to be equal: one changed, missing or added pair moves the sum by a 64-bit hash, so sets that differ
collide with a chance of about 2**-64 (not a defence against someone forging collisions on purpose).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, NamedTuple, Optional


class Digest(NamedTuple):
  count: int
  total: int

  def plus(self, other: "Digest") -> "Digest":
    return Digest(self.count + other.count, self.total + other.total)


EMPTY = Digest(0, 0)

# The same hash in PostgreSQL (11 or later: sha256()), of the columns id and text_sha256; summed as numeric.
POSTGRES_PAIR_HASH = ("('x' || left(encode(sha256(convert_to(id || E'\\n' || coalesce(text_sha256, ''), 'UTF8')), "
                      "'hex'), 16))::bit(64)::bigint")


def pair_hash(record_id: str, text_sha256: Optional[str]) -> int:
  data = (record_id + "\n" + (text_sha256 or "")).encode("utf-8", "surrogatepass")
  return int.from_bytes(hashlib.sha256(data).digest()[:8], "big", signed=True)


def digest(pairs: Iterable[tuple[str, Optional[str]]]) -> Digest:
  count = total = 0
  for record_id, text_sha256 in pairs:
    count += 1
    total += pair_hash(record_id, text_sha256)
  return Digest(count, total)
