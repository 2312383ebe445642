"""What every notebook's Setup cell runs (`setup_notebook`), and the guard of a section that needs
a newer Keras than the kernel has (`keras_allows`).

The Setup cell is generated (`helpers.tooling.notebook_index.setup_source`): it installs this
package on Colab or Kaggle, stops with the ``pip install`` line elsewhere when the package is
missing, and then calls ``setup_notebook(keras_gates=[...])`` with the version gates
(`helpers.compat.KERAS_GATES`) its sections use -- the gates its ``keras_allows`` calls name.

A section that needs a newer Keras is written ``if keras_allows(gate, shows=..., committed=...):``.
On an older Keras it prints one line instead of running: what the section would show, why not
with this Keras (the gate's entry in the table) and where its committed result is. The rest of
the notebook runs; nothing is upgraded unless the reader runs the ``%pip`` line that the Setup
cell printed.

Nothing here imports TensorFlow or Keras at import time: the Setup cell imports this module
before `check_environment` has installed what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from packaging.requirements import Requirement

from helpers.notebook.environment import check_environment, requirements


def lower_bound(requirement: Requirement) -> tuple[int, ...]:
    """The release of `requirement`'s ``>=`` bound, e.g. (3, 5) for ``keras>=3.5,<3.16``."""
    (bound,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    return tuple(int(part) for part in bound.split("."))


def dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def upgrade_command(keras: Requirement, oldest: tuple[int, ...]) -> str:
    """The ``%pip`` line that installs a Keras from `oldest` on, within the supported range, and
    leaves everything else (TensorFlow included) as it is."""
    upper = [str(spec) for spec in keras.specifier if spec.operator != ">="]
    return f'%pip install -q "keras>={dotted(oldest)}{"".join("," + s for s in upper)}"'


def needs_message(keras_gates: Iterable[str], keras_version: str, gates: dict,
                  declared: dict[str, Requirement]) -> str:
    """What the Setup cell says about versions: the oldest TensorFlow and Keras this notebook
    needs (pyproject.toml's lower bounds, raised by the gates its sections use: `gates` is
    `helpers.compat.KERAS_GATES`), and, with an older `keras_version`, which sections will not
    run and the one command that lets them."""
    tensorflow, keras = declared["tensorflow"], declared["keras"]
    base = lower_bound(keras)
    used = {name: gates[name] for name in keras_gates}
    needed = max([base, *(gate.oldest for gate in used.values())])
    if needed == base:
        return (f"This notebook needs TensorFlow {dotted(lower_bound(tensorflow))} or newer and "
                f"Keras {dotted(base)} or newer.")
    raising = [gate.what for gate in used.values() if gate.oldest == needed]
    installed = tuple(int(part) for part in keras_version.split(".")[:2])
    if installed >= needed:
        return (f"This notebook needs TensorFlow {dotted(lower_bound(tensorflow))} or newer and "
                f"Keras {dotted(needed)} or newer for {' and '.join(raising)} (Keras "
                f"{dotted(base)} for the rest).")
    return (f"Keras {keras_version} is older than the {dotted(needed)} this notebook needs for "
            f"{' and '.join(raising)}: the sections that need it print a note instead of "
            f"running. To run them: {upgrade_command(keras, needed)}, then restart the kernel "
            "(TensorFlow stays as it is).")


def setup_notebook(keras_gates: Iterable[str] = (), *, backend: str = "tensorflow",
                   cpu_devices: int | None = None) -> None:
    """The Setup cell's work: the installed packages checked (and on Colab or Kaggle the missing
    ones installed) by `check_environment`, then one line on the versions in use and one on the
    versions this notebook needs, given the names of the `helpers.compat.KERAS_GATES` its
    sections use. With the TensorFlow `backend`, TensorFlow is imported first, without its
    start-up log lines. Another `backend` (``"jax"``) is set in KERAS_BACKEND before Keras is
    imported (Keras picks its backend once, at its first import) and loads no TensorFlow;
    `cpu_devices` then splits the CPU into that many XLA devices (XLA_FLAGS, read when JAX
    starts), for `keras.distribution`."""
    check_environment()
    if backend != "tensorflow":
        os.environ["KERAS_BACKEND"] = backend
        if cpu_devices:
            flag = f"--xla_force_host_platform_device_count={cpu_devices}"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        framework = __import__(backend)
        devices = f"{len(framework.devices())} {backend} device(s)"
    else:
        from helpers.notebook.quiet_tensorflow import tf  # before Keras: it loads TensorFlow

        framework = tf
        gpus = len(tf.config.list_physical_devices("GPU"))
        devices = f"{gpus} GPU(s)" if gpus else "no GPU"
    import keras
    import numpy as np

    import helpers
    from helpers import compat

    unknown = sorted(set(keras_gates) - set(compat.KERAS_GATES))
    if unknown:
        raise ValueError(f"unknown Keras gates {unknown}: helpers.compat.KERAS_GATES has "
                         f"{sorted(compat.KERAS_GATES)}")
    name = "TensorFlow" if backend == "tensorflow" else backend.upper()
    print(f"{name} {framework.__version__} · Keras {keras.__version__} ({keras.backend.backend()} "
          f"backend) · NumPy {np.__version__} · helpers {helpers.__version__} · "
          f"{os.cpu_count()} CPU cores · {devices}")
    declared = {requirement.name: requirement for requirement in requirements()}
    print(needs_message(keras_gates, keras.__version__, compat.KERAS_GATES, declared))


def keras_allows(gate: str, shows: str, committed: str) -> bool:
    """Whether the installed Keras runs a section that needs `gate` (`helpers.compat.supports`).
    If not, prints one line instead: what the section `shows`, why not with this Keras (the
    gate's entry in `helpers.compat.KERAS_GATES`) and where its `committed` result is."""
    import keras

    from helpers import compat

    if compat.supports(gate):
        return True
    needed = compat.KERAS_GATES[gate]
    print(f"Not run with Keras {keras.__version__}: {shows}. It needs Keras "
          f"{dotted(needed.oldest)} or newer for {needed.what}, because {needed.why}. "
          f"Committed result: {committed}.")
    return False
