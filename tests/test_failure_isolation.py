"""Failure isolation inside a batch."""
import pytest

from runtime.failure_isolation import (SYSTEMIC_AFTER, FailureIsolation, SystemicError, describe,
                                       run_isolating_failures)


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


def _failing_with_a_counter():
  """A fault that fails every call, with a count in its message (as TensorFlow's out-of-memory errors carry a
  shape): no two errors read alike."""
  calls = []

  def fn(part):
    calls.append(len(part))
    raise RuntimeError(f"OOM when allocating tensor with shape[{len(calls)},{len(part)},384]")
  return fn, calls


def test_a_fault_whose_message_varies_is_raised_once_the_probe_fails_too_not_dead_lettered():
  fn, calls = _failing_with_a_counter()
  isolation = FailureIsolation(probe=lambda: ["probe one", "probe two"], name="the encoder")
  with pytest.raises(SystemicError) as raised:
    list(isolation.run(list(range(64)), fn))
  message = str(raised.value)
  assert "\n" not in message and message.startswith("the encoder fails on its probe texts too after "
                                                     f"{SYSTEMIC_AFTER} different records in a row failed alone")
  assert message.endswith(f"RuntimeError: OOM when allocating tensor with shape[{len(calls)},1,384]")
  assert isinstance(raised.value.__cause__, RuntimeError)
  # 64 -> ... -> 1 (7 calls), the first record alone once more, then 3 more records (2 calls each, their halves
  # failing first), then each probe element alone: nothing was dead-lettered along the way.
  assert calls[:7] == [64, 32, 16, 8, 4, 2, 1] and calls[-2:] == [1, 1] and len(calls) <= 7 + 1 + 3 * 2 + 2


def test_without_a_probe_a_record_that_succeeded_before_is_the_probe():
  isolation = FailureIsolation()
  assert [r for _, r, _ in isolation.run(["good"], lambda part: [len(x) for x in part])] == [4]
  fn, calls = _failing_with_a_counter()
  with pytest.raises(SystemicError, match="fails on a record it succeeded on before too"):
    list(isolation.run([f"r{i}" for i in range(8)], fn))
  with pytest.raises(SystemicError, match="has not succeeded on any record yet"):
    list(FailureIsolation().run(list(range(8)), _failing_with_a_counter()[0]))


def test_the_streak_spans_batches_so_batches_of_one_record_cannot_hide_a_systemic_error():
  isolation = FailureIsolation(probe=lambda: ["probe"])
  for i in range(SYSTEMIC_AFTER - 1):
    ((element, result, error),) = isolation.run([i], _always("device lost"))
    assert (element, result, str(error)) == (i, None, "device lost")
  with pytest.raises(SystemicError, match="device lost"):
    list(isolation.run([SYSTEMIC_AFTER], _always("device lost")))


def test_poisonous_records_with_one_message_side_by_side_stay_dead_letters_when_the_probe_succeeds():
  poisonous = set(range(10, 30))  # 20 records in a row hold the poisonous token and fail alike
  probes = []

  def fn(part):
    if "probe" in part:
      probes.append(part)
    if poisonous & set(p for p in part if p != "probe"):
      raise ValueError("assertion failed: [poisonous token]")
    return [str(x) for x in part]

  out = list(FailureIsolation(probe=lambda: ["probe"]).run(list(range(64)), fn))
  assert sorted(e for e, _, err in out if err is not None) == sorted(poisonous)
  assert [r for e, r, err in out if err is None] == [str(e) for e in range(64) if e not in poisonous]
  assert len(probes) == 3  # after 4, 8 and 16 lone failures in a row: twice as many before each next probe


def test_one_good_probe_text_is_enough_so_a_poisonous_token_in_a_probe_text_does_not_fail_the_job():
  def fn(part):
    if any("fox" in x for x in part):
      raise ValueError("poisonous token")
    return list(part)

  isolation = FailureIsolation(probe=lambda: ["the quick brown fox", "hello world"])
  out = list(isolation.run([f"fox {i}" for i in range(8)] + ["ok"], fn))
  assert [err is not None for _, _, err in out] == [True] * 8 + [False]


def test_bad_records_with_one_message_but_good_records_between_them_stay_dead_letters():
  bad = {3, 4, 5, 20, 21, 22, 40, 41, 42, 63}  # three in a row at most, then good ones

  def fn(part):
    if bad & set(part):
      raise ValueError("non-finite output")
    return [x + 1 for x in part]

  out = list(run_isolating_failures(list(range(64)), fn))
  assert sorted(e for e, _, err in out if err is not None) == sorted(bad)
  assert [r for e, r, err in out if err is None] == [e + 1 for e in range(64) if e not in bad]


def test_repeats_of_one_input_count_once():
  # The same bad text eight times in a row is one bad input, not eight: dead letters, and no probe.
  isolation = FailureIsolation(key=lambda x: x, probe=lambda: 1 / 0)
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


def test_a_tensorflow_graph_error_is_described_by_the_ops_own_message_with_its_digits():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  @tf.function
  def check(ids):
    tf.debugging.assert_less(ids, tf.constant(30522), message="token id out of range")
    return ids

  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    check(tf.constant([101, 40000, 102]))
  assert str(raised.value).startswith("Graph execution error:\n")  # what every dead letter used to say, and only that
  reason = describe(raised.value)
  assert reason.startswith("InvalidArgumentError: assertion failed: [token id out of range] [Condition x < y")
  assert "[101 40000 102]" in reason and "30522" in reason and "(node assert_less/Assert/Assert)" in reason
  assert "\n" not in reason and "File " not in reason and "__inference" not in reason
  long = describe(ValueError("too long " * 100))
  assert len(long) == len("ValueError: ") + 300 and long.endswith("…")
