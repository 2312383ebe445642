#!/usr/bin/env bash
# The unit tests with the oldest supported versions (requirements-oldest.txt: the lower bounds of
# pyproject.toml's ranges) in .venv-oldest, and the Colab simulation (marker venv), which reuses
# this environment's TensorFlow and Keras. Not the notebooks, the browser test or the tests marked
# versionless (README, text and notebook-file checks, the same with any versions): those run with
# the pinned versions in scripts/test.sh.
#
# Usage: bash scripts/test_oldest.sh [extra pytest arguments]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --oldest
echo "==> pytest tests with $(.venv-oldest/bin/python -c 'import importlib.metadata as m;
print(", ".join(f"{n} {m.version(n)}" for n in ("tensorflow", "keras", "numpy", "pandas")))')"
status=0
TF_CPP_MIN_LOG_LEVEL=2 .venv-oldest/bin/python -m pytest tests \
    -m "venv or not (browser or pinned or versionless)" \
    --ignore=tests/test_papermill.py --durations=15 "$@" || status=$?
if (( status == 5 )); then
    echo "test_oldest: pytest collected no tests; that counts as a failure." >&2
    exit 1
fi
exit "$status"
