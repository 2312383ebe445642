#!/usr/bin/env bash
# Create .venv (if absent) and install the pinned requirements into it.
#
# Idempotent and quick: pip runs only when the requirements file or pyproject.toml is newer than
# the stamp left by the last successful install (or with --force).
#
# Usage: bash scripts/setup.sh [--oldest] [--force]
#   --oldest  .venv-oldest with requirements-oldest.txt: the oldest supported versions, which
#             scripts/test_oldest.sh (run by CI) tests the helpers with.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=.venv
requirements=requirements.txt
force=""
for argument in "$@"; do
    case "$argument" in
        --oldest) venv=.venv-oldest; requirements=requirements-oldest.txt ;;
        --force) force=1 ;;
        *) echo "setup: unknown argument $argument (usage: setup.sh [--oldest] [--force])" >&2
           exit 2 ;;
    esac
done
stamp="$venv/.requirements-installed"

if [[ ! -x "$venv/bin/python" ]]; then
    python=""
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then
            python=$candidate
            break
        fi
    done
    if [[ -z "$python" ]]; then
        echo "setup: no python3.11 or python3 found on PATH; install Python 3.10 or newer." >&2
        exit 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "setup: $python is $("$python" --version 2>&1); Python 3.10 or newer is needed." >&2
        exit 1
    fi
    echo "setup: creating $venv with $python ($("$python" --version 2>&1))"
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        echo "setup: '$python -m venv' failed. On Debian/Ubuntu install the venv module first:" >&2
        echo "       sudo apt-get install python3-venv" >&2
        exit 1
    fi
fi

if [[ -z "$force" && -f "$stamp" && "$stamp" -nt "$requirements" \
      && "$stamp" -nt pyproject.toml ]]; then
    echo "setup: $venv is up to date with $requirements"
    exit 0
fi

echo "setup: installing $requirements into $venv (a few minutes the first time)"
"$venv/bin/python" -m pip install --quiet -r "$requirements"
touch "$stamp"
echo "setup: done"
