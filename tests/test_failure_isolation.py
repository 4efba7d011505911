"""Failure isolation inside a batch."""
import pytest

from runtime.failure_isolation import SYSTEMIC_AFTER, FailureIsolation, describe, run_isolating_failures


def test_one_poisonous_element_fails_alone_and_calls_stay_logarithmic():
  calls = []

  def fn(part):
    calls.append(len(part))
    if 13 in part:
      raise ValueError("poison")
    return [x * 2 for x in part]

  out = list(run_isolating_failures(list(range(64)), fn))
  assert [e for e, _, _ in out] == list(range(64))
  failed = [(e, str(err)) for e, r, err in out if err is not None]
  assert failed == [(13, "poison")]
  assert all(r == e * 2 for e, r, err in out if err is None)
  assert len(calls) <= 2 * 6 + 1


def test_all_good_is_one_call_and_describe_is_one_line():
  calls = []
  out = list(run_isolating_failures([1, 2, 3], lambda p: calls.append(1) or list(p)))
  assert len(calls) == 1 and [r for _, r, _ in out] == [1, 2, 3]
  assert describe(RuntimeError("first line\nsecond")) == "RuntimeError: first line"


def _always(message):
  def fn(part):
    raise RuntimeError(message)
  return fn


def test_an_error_that_fails_every_record_is_raised_not_dead_lettered():
  with pytest.raises(RuntimeError, match="driver fault") as raised:
    list(run_isolating_failures(list(range(64)), _always("driver fault")))
  assert any(f"{SYSTEMIC_AFTER} different records in a row" in note for note in raised.value.__notes__)


def test_the_streak_spans_batches_so_batches_of_one_record_cannot_hide_a_systemic_error():
  isolation = FailureIsolation()
  for i in range(SYSTEMIC_AFTER - 1):
    ((element, result, error),) = isolation.run([i], _always("device lost"))
    assert (element, result, str(error)) == (i, None, "device lost")
  with pytest.raises(RuntimeError, match="device lost"):
    list(isolation.run([SYSTEMIC_AFTER], _always("device lost")))


def test_bad_records_with_one_message_but_good_records_between_them_stay_dead_letters():
  bad = {3, 4, 5, 20, 21, 22, 40, 41, 42, 63}  # three in a row at most, then good ones

  def fn(part):
    if bad & set(part):
      raise ValueError("non-finite output")
    return [x + 1 for x in part]

  out = list(run_isolating_failures(list(range(64)), fn))
  assert sorted(e for e, _, err in out if err is not None) == sorted(bad)
  assert [r for e, r, err in out if err is None] == [e + 1 for e in range(64) if e not in bad]


def test_different_errors_and_repeats_of_one_input_do_not_make_a_streak():
  def fn(part):  # every record fails, each with its own message
    raise ValueError(f"record {part[0]} is bad")

  out = list(run_isolating_failures(list(range(16)), fn))
  assert [e for e, _, err in out if err is not None] == list(range(16))
  # The same bad text eight times in a row is one bad input, not eight: dead letters, not a systemic error.
  isolation = FailureIsolation(key=lambda x: x)
  out = list(isolation.run(["bad"] * 8 + ["ok"], lambda p: [len(x) for x in p] if "bad" not in p else 1 / 0))
  assert [err is not None for _, _, err in out] == [True] * 8 + [False]


def test_retries_are_counted_and_a_lone_record_gets_its_tries():
  counted, calls = [], []

  def fn(part):
    calls.append(len(part))
    if 5 in part:
      raise ValueError("poison")
    return list(part)

  isolation = FailureIsolation(tries_alone=2, on_retry=lambda: counted.append(1))
  out = list(isolation.run(list(range(8)), fn))
  assert [e for e, _, err in out if err is not None] == [5]
  # 0-7 fails; 0-3 ok, 4-7 fails; 4-5 fails; 4 ok, 5 fails and fails again alone; 6-7 ok. All but the first count.
  assert calls == [8, 4, 4, 2, 1, 1, 1, 2] and len(counted) == len(calls) - 1
