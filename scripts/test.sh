#!/usr/bin/env bash
# Lint, then run the tests and every notebook (nbval, smoke-test settings).
#
# Usage: bash scripts/test.sh [extra pytest arguments]
# TAPE_VS_FIT_SMOKE=1 shrinks folds, epochs and data so that each notebook runs in seconds
# (see helpers/experiments/params.py). pytest finding no tests (exit code 5) counts as a failure.
# Includes tests/test_browser.py (JupyterLab in headless chromium) and tests/test_colab_setup.py
# (a fresh venv); `-m "not browser and not venv"` deselects them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"

# Only the folders that exist: ruff and pytest both fail on a missing path.
lint_paths=()
for path in helpers tests benchmarks notebooks; do
    if [[ -e "$path" ]]; then lint_paths+=("$path"); fi
done
test_paths=()
for path in tests notebooks; do
    if [[ -e "$path" ]]; then test_paths+=("$path"); fi
done

# ruff first; pytest runs even when ruff fails, so one run reports both.
echo "==> ruff check ${lint_paths[*]}"
ruff_status=0
ruff check "${lint_paths[@]}" || ruff_status=$?

# The browser test needs Debian's chromium (.ci/run installs it). Elsewhere, without it, skip that
# test with a note rather than fail; in CI (CI=true) it always runs.
browser_args=()
if [[ -z "${CI:-}" && -z "${CHROMIUM:-}" ]] && ! command -v chromium >/dev/null 2>&1; then
    echo "test: no chromium on PATH, so the browser test is deselected" \
         "(apt-get install chromium to run it)." >&2
    browser_args=(-m "not browser")
fi

echo "==> pytest ${test_paths[*]} (notebooks with nbval-lax, TAPE_VS_FIT_SMOKE=1)"
pytest_status=0
# --durations: the slowest tests in the log, to keep CI within its time budget
TAPE_VS_FIT_SMOKE=1 python -m pytest --nbval-lax --nbval-current-env --durations=15 \
    "${test_paths[@]}" "${browser_args[@]}" "$@" || pytest_status=$?

if (( pytest_status == 5 )); then
    echo "test: pytest collected no tests; that counts as a failure." >&2
    exit 1
fi
if (( ruff_status != 0 )); then
    echo "test: ruff found problems (see above; \`ruff check --fix\` fixes some)." >&2
    exit 1
fi
exit "$pytest_status"
