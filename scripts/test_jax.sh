#!/usr/bin/env bash
# The JAX backend's tests (tests/test_jax.py), in their own pytest process: Keras picks its
# backend once, when first imported, so these cannot share a process with the TensorFlow tests.
# The pinned versions only: .venv-oldest has no JAX. Two host CPU devices for
# keras.distribution.DataParallel (XLA reads the flag when JAX starts). Appendix A5 runs in
# JupyterLab in the browser test; where that is deselected, scripts/test.sh passes A5 here, to
# run under nbval (smoke settings).
#
# Usage: bash scripts/test_jax.sh [notebooks/A5_jax_backend.ipynb] [extra pytest arguments]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    export VIRTUAL_ENV="$PWD/.venv"
    export PATH="$VIRTUAL_ENV/bin:$PATH"
fi
export KERAS_BACKEND=jax
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=2"
echo "==> pytest tests/test_jax.py $* (KERAS_BACKEND=jax, two host CPU devices," \
     "TAPE_VS_FIT_SMOKE=1)"
TAPE_VS_FIT_SMOKE=1 python -m pytest --durations=10 --nbval-lax --nbval-current-env \
    tests/test_jax.py "$@"
