#!/usr/bin/env bash
# Sets up .venv and embeds the bundled sample corpus with the offline default model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
out="${BERT_EMBED_QUICKSTART_OUT:-$root/out/sample}"
exec "$root/.venv/bin/bert-embed" run --model default \
  --input "$root/sample_corpus/*.txt" --output "$out" --keep-text --show-neighbours 5 "$@"
