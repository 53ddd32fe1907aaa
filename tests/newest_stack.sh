#!/usr/bin/env bash
# The suite on the newest stack: Python 3.13 with the newest jax, flax, orbax and
# grain that resolve, in .venv313, including the cross-version checkpoint test
# against the Python 3.11 stack in .venv (run from the repository root after the
# README's set-up). SSD_JAX_NEWEST_PYTHON picks another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${SSD_JAX_NEWEST_PYTHON:-}"
if [[ -z "$python" ]]; then
    if python3.13 -c "" 2>/dev/null; then
        python=python3.13
    elif command -v pyenv >/dev/null && compgen -G "$(pyenv root)/versions/3.13*/bin/python3.13" >/dev/null; then
        python=$(compgen -G "$(pyenv root)/versions/3.13*/bin/python3.13" | sort -V | tail -n 1)
    else
        echo "no Python 3.13 found: install it (e.g. pyenv install 3.13) or set SSD_JAX_NEWEST_PYTHON" >&2
        exit 1
    fi
fi
[[ -x .venv/bin/python ]] || { echo "no .venv: run the README's set-up first" >&2; exit 1; }
"$python" -m venv .venv313
.venv313/bin/pip install -q -e ".[dev]"
.venv313/bin/python -c "import jax, flax, orbax.checkpoint, grain, sys; \
print('newest stack: Python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__)"
SSD_JAX_OTHER_PYTHON="$PWD/.venv/bin/python" .venv313/bin/python -m pytest "$@"
