"""Every version gate of the project, in one table, and the Keras/TensorFlow internals it relies on.

Some of fit's behaviours changed between the supported Keras versions (pyproject.toml: Keras
3.5-3.15). Where a loop is shown to reproduce fit only from some version on, it refuses older
versions by name (`require_keras`) rather than train silently differently; `KERAS_GATES` lists
them all, with the test that shows the behaviour on the pinned version.
"""

from __future__ import annotations

from typing import NamedTuple

import keras


class KerasGate(NamedTuple):
    """A behaviour of fit that a loop reproduces only from `oldest` on."""

    oldest: tuple[int, int]  # (major, minor): the oldest Keras shown to behave as fit
    what: str  # what is refused on older versions, as a reader would name it
    why: str  # what differs there, and where it is tested


KERAS_GATES = {
    "loss_scaling": KerasGate(
        (3, 15), "loss scaling (LossScaleOptimizer, e.g. under a mixed_float16 policy)",
        "the loop follows the loss scaling of Keras 3.15's fit (tests/test_fit_options.py)"),
    "strategy": KerasGate(
        (3, 15), "the distributed loop",
        "it scales the loss as Keras 3.15's fit does under a strategy, and older fits scale it "
        "otherwise (tests/test_distributed.py)"),
    "early_stopping_resume": KerasGate(
        (3, 15), "resuming EarlyStopping",
        "with Keras 3.5 a resumed fit's EarlyStopping(restore_best_weights) ends with other "
        "weights than an uninterrupted one; 3.15 matches bit for bit (tests/test_checkpoints.py)"),
}


def keras_version() -> tuple[int, int]:
    """The installed Keras' (major, minor) version."""
    major, minor = keras.__version__.split(".")[:2]
    return int(major), int(minor)


def supports(gate: str) -> bool:
    """Whether the installed Keras is at least the `gate`'s oldest version."""
    return keras_version() >= KERAS_GATES[gate].oldest


def require_keras(gate: str) -> None:
    """Raise NotImplementedError naming what is refused, the installed Keras and the oldest one
    that works, when the installed Keras is older than `gate` allows."""
    if not supports(gate):
        needed = KERAS_GATES[gate]
        raise NotImplementedError(
            f"{needed.what} with Keras {keras.__version__}: needs Keras "
            f"{'.'.join(map(str, needed.oldest))} or newer, because {needed.why}; upgrade with "
            f"pip install 'keras>={'.'.join(map(str, needed.oldest))}'")


# --- A Keras internal that a train_step override needs (helpers.training.custom_step) ---


def loss_tracker(model: keras.Model) -> keras.metrics.Mean:
    """The compiled `model`'s loss tracker: the ``Mean`` named ``loss`` that ``compile`` creates
    (keras/src/trainers/trainer.py: ``Trainer.compile``, ``self._loss_tracker``) and fit's own
    step updates (keras/src/backend/tensorflow/trainer.py: ``TensorFlowTrainer.train_step`` and
    ``test_step``); History's ``loss`` is its result. Keras has no public handle on it: the
    keras.io guide "Customizing what happens in fit() with TensorFlow" finds it in
    ``model.metrics`` by its name, which a metric compiled as ``"loss"`` would share. Same
    attribute in Keras 3.5 and 3.15."""
    return model._loss_tracker
