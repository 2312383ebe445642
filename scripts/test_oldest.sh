#!/usr/bin/env bash
# The oldest supported versions (requirements-oldest.txt: the lower bounds of pyproject.toml's
# ranges) in .venv-oldest: the unit tests and the Colab simulation (tests/test_colab_setup.py: a
# fresh virtual environment holding these versions' TensorFlow and Keras, as Colab holds older
# ones than the pins), then every notebook under nbval (--nbval-lax: each runs to the end without
# an error, and the cells marked NBVAL_CHECK_OUTPUT print what they printed when committed) at
# the smoke settings, TAPE_VS_FIT_SMOKE=1. A section that needs a newer Keras prints one line
# there instead of running (helpers.notebook.setup.keras_allows). Not the browser test, the
# tests marked pinned (equalities an older Keras does not give, and tools the README runs with
# .venv) or versionless (README, text and notebook-file checks, the same with any versions):
# those run with the pinned versions in scripts/test.sh; and not the JAX appendix A5, which
# runs there in the browser test.
#
# Usage: bash scripts/test_oldest.sh [extra pytest arguments]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --oldest
echo "==> pytest tests and notebooks with $(.venv-oldest/bin/python -c 'import importlib.metadata as m;
print(", ".join(f"{n} {m.version(n)}" for n in ("tensorflow", "keras", "numpy", "pandas")))')"
# The notebooks run from a fresh copy, output/oldest/notebooks, so that what they write to
# ../output (e.g. the cross-validation folds that later notebooks read back) is this run's own:
# apart from output/, which scripts/test.sh's browser test writes at the same time, and from an
# earlier run's. ../results, which they read, is linked.
test_paths=(tests)
if [[ -e notebooks ]]; then
    rm -rf output/oldest
    mkdir -p output/oldest
    cp -r notebooks output/oldest/notebooks
    # A5 runs under JAX, which this environment does not install: scripts/test.sh runs it at the
    # pinned versions (in JupyterLab).
    rm output/oldest/notebooks/A5_jax_backend.ipynb
    ln -s ../../results output/oldest/results
    test_paths+=(output/oldest/notebooks)
fi
# One pytest process, the unit tests first: .ci/run runs this alongside scripts/test.sh's two.
status=0
TAPE_VS_FIT_SMOKE=1 TF_CPP_MIN_LOG_LEVEL=2 .venv-oldest/bin/python -m pytest "${test_paths[@]}" \
    -m "not (browser or pinned or versionless)" --nbval-lax --nbval-current-env \
    --ignore=tests/test_papermill.py --ignore=tests/test_jax.py --durations=25 "$@" || status=$?
if (( status == 5 )); then
    echo "test_oldest: pytest collected no tests; that counts as a failure." >&2
    exit 1
fi
exit "$status"
