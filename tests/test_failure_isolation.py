"""Failure isolation inside a batch."""
from runtime.failure_isolation import describe, run_isolating_failures


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
