#!/usr/bin/env bash
# Runs the whole test suite (creating .venv first if it is missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
# A test that ends the pytest process itself (os._exit) would end the run early with any exit code: pytest's
# session-finish hook (tests/conftest.py) writes this file, and a run without it fails.
finished="$(mktemp -u "${TMPDIR:-/tmp}/bert-embed-tests-finished.XXXXXX")"
status=0
BERT_EMBED_TESTS_FINISHED="$finished" "$root/.venv/bin/python" -m pytest tests "$@" || status=$?
if [[ ! -f "$finished" ]]; then
  echo "scripts/test.sh: pytest ended before its session finished (exit status $status)" >&2
  exit 1
fi
rm -f "$finished"
exit "$status"
