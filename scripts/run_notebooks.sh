#!/usr/bin/env bash
# Execute every notebook (the main sequence notebooks/01_*.ipynb ..., then the appendices
# notebooks/A1_*.ipynb ..., in order) headless with papermill at its default
# parameters. Executed copies go to output/notebooks/; the notebooks write their figures and
# tables to output/ themselves. Stops at the first notebook that fails.
#
# Usage: bash scripts/run_notebooks.sh [extra papermill arguments, passed to every notebook]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"

shopt -s nullglob
notebooks=(notebooks/[0-9][0-9]_*.ipynb notebooks/A[0-9]*_*.ipynb)
if (( ${#notebooks[@]} == 0 )); then
    echo "run_notebooks: no notebooks/01_*.ipynb ... or A1_*.ipynb ... found" >&2
    exit 1
fi

mkdir -p output/notebooks
for notebook in "${notebooks[@]}"; do
    executed="output/notebooks/$(basename "$notebook")"
    echo "==> $notebook -> $executed"
    if ! papermill --cwd notebooks "$notebook" "$executed" -k python3 "$@"; then
        echo >&2
        echo "run_notebooks: FAILED at $notebook; the executed copy with the error is $executed." >&2
        echo "run_notebooks: the notebooks after it were not run." >&2
        exit 1
    fi
done
echo "run_notebooks: all ${#notebooks[@]} notebooks ran; figures and tables are in output/"
