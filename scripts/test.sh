#!/usr/bin/env bash
# Lint, then run the tests, every notebook among them: each runs in JupyterLab
# (tests/test_browser.py, smoke-test settings), which also compares the outputs of the cells
# marked NBVAL_CHECK_OUTPUT with the committed ones, as nbval does. (nbval runs the notebooks at
# the oldest supported versions: scripts/test_oldest.sh.)
#
# Usage: bash scripts/test.sh [extra pytest arguments]
# TAPE_VS_FIT_SMOKE=1 shrinks folds, epochs and data so that each notebook runs in seconds
# (see helpers/experiments/params.py). pytest finding no tests (exit code 5) counts as a failure.
# `-m "not browser"` deselects the browser test, `-m "not venv"` the Colab simulation
# (tests/test_colab_setup.py, a fresh virtual environment holding .venv-oldest's TensorFlow).
# Without extra arguments the browser test runs in a second pytest process alongside the other
# tests, and the Colab simulation is left to scripts/test_oldest.sh (which CI runs alongside).
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

# --durations: the slowest tests in the log, to keep CI within its time budget.
pytest_status=0
notebook_status=0
if (( $# == 0 && ${#browser_args[@]} == 0 )); then
    # Without extra arguments (as in CI): two pytest processes side by side, as one keeps about one
    # of two cores busy. In the background: every notebook in JupyterLab (the browser test,
    # appendix A5 among them) and background_tests, moved there so that the two processes end at
    # about the same time (their --durations lists say where the time goes); then the JAX tests
    # (scripts/test_jax.sh, their own process). In the foreground the other tests. The
    # background log follows.
    # Each process's TensorFlow gets its share of the cores (unless the caller chose, as .ci/run
    # does for three processes): TensorFlow's default, pools as large as the machine in every
    # process, oversubscribes the cores (measured on 2 cores, three processes side by side: 9%
    # longer, 8% more CPU time).
    threads=$(( $(nproc) / 2 ))
    (( threads > 0 )) || threads=1
    export TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-$threads}
    export TF_NUM_INTEROP_THREADS=${TF_NUM_INTEROP_THREADS:-$TF_NUM_INTRAOP_THREADS}
    background_tests=(tests/test_checkpoints.py tests/test_reproduction.py tests/test_heldout.py
                      tests/test_benchmark.py)
    notebook_log=$(mktemp)
    echo "==> pytest tests/test_browser.py ${background_tests[*]}, then scripts/test_jax.sh" \
         "(TAPE_VS_FIT_SMOKE=1), in the background"
    (
        status=0
        TAPE_VS_FIT_SMOKE=1 python -m pytest --durations=20 tests/test_browser.py \
            "${background_tests[@]}" || status=$?
        bash scripts/test_jax.sh || status=$?
        exit "$status"
    ) >"$notebook_log" 2>&1 &
    notebook_pid=$!
    trap 'kill "$notebook_pid" 2>/dev/null || true; rm -f "$notebook_log"' EXIT
    echo "==> pytest tests -m 'not browser and not venv' (TAPE_VS_FIT_SMOKE=1)"
    # (tests/test_jax.py skips itself under TensorFlow; ignored, it does not even import JAX)
    TAPE_VS_FIT_SMOKE=1 python -m pytest --durations=15 tests -m "not browser and not venv" \
        "${background_tests[@]/#/--ignore=}" --ignore=tests/test_jax.py || pytest_status=$?
    wait "$notebook_pid" || notebook_status=$?
    echo "==> pytest tests/test_browser.py ${background_tests[*]}, then scripts/test_jax.sh" \
         "(ran in the background), exit $notebook_status:"
    cat "$notebook_log"
else
    echo "==> pytest tests (TAPE_VS_FIT_SMOKE=1)"
    TAPE_VS_FIT_SMOKE=1 python -m pytest --durations=15 tests "${browser_args[@]}" "$@" \
        || pytest_status=$?
    if (( $# == 0 )); then  # the JAX backend needs a process of its own; A5 runs there
        bash scripts/test_jax.sh notebooks/A5_jax_backend.ipynb || pytest_status=$?
    fi
fi

if (( pytest_status == 5 || notebook_status == 5 )); then
    echo "test: pytest collected no tests; that counts as a failure." >&2
    exit 1
fi
if (( ruff_status != 0 )); then
    echo "test: ruff found problems (see above; \`ruff check --fix\` fixes some)." >&2
    exit 1
fi
if (( pytest_status != 0 )); then
    exit "$pytest_status"
fi
exit "$notebook_status"
