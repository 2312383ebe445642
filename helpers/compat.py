"""Every version gate of the project, in one table, and every private Keras/TensorFlow symbol the
project uses, each behind one small function here.

Some of fit's behaviours changed between the supported Keras versions (pyproject.toml: Keras
3.5-3.15). Where a loop is shown to reproduce fit only from some version on, it refuses older
versions by name (`require_keras`) rather than train silently differently; `KERAS_GATES` lists
them all, with the test that shows the behaviour on the pinned version.

The functions below the table reach into Keras where its public API has no bit-identical
equivalent. Each names the Keras source it relies on (file and symbol, Keras 3.15.1), and
tests/test_compat.py checks each against the installed Keras, so an upgrade that moves or
changes one fails there, by name, rather than somewhere in a training run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
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


# ----------------------------------------------------------------------------------------------
# Keras internals: the model's compiled state


def loss_tracker(model: keras.Model) -> keras.metrics.Mean:
    """The Mean named ``loss`` that ``compile`` creates and fit's steps update with each batch's
    loss (keras/src/trainers/trainer.py: ``Trainer.compile`` sets ``_loss_tracker``;
    keras/src/backend/tensorflow/trainer.py: ``TensorFlowTrainer.train_step`` updates it).
    Keras has no public handle on it but its place in ``model.metrics``: the first one
    (keras/src/trainers/trainer.py: ``Trainer.metrics``, "Order: loss tracker, ...")."""
    tracker = model.metrics[0] if model.metrics else None
    if not (isinstance(tracker, keras.metrics.Mean) and tracker.name == "loss"):
        raise ValueError(f"model {model.name!r} has no loss tracker first in model.metrics "
                         f"(found {tracker!r}): is it compiled?")
    return tracker


def compile_argument(model: keras.Model, name: str):
    """What ``compile`` was given as `name` (e.g. ``loss_weights``), as given. ``compile`` keeps
    its arguments in ``_compile_config`` (keras/src/trainers/trainer.py: ``Trainer.compile``);
    the public ``get_compile_config`` returns them serialized, optimizer and loss included."""
    return model._compile_config.config.get(name)


def build_like_fit(model: keras.Model, data_batch: tuple) -> None:
    """Create the compiled loss's and metrics' state and the optimizer's variables for batches
    like `data_batch` (``(x, y)`` or ``(x, y, sample_weight)``) before the first step, with
    Keras' own keras/src/trainers/trainer.py: ``Trainer._symbolic_build`` (shapes only, nothing
    is computed). Created inside the first call of a tf.function instead, they make it trace
    twice. fit builds them first only under a distribution strategy: with the TensorFlow backend
    and none, ``TensorFlowTrainer._maybe_symbolic_build`` returns early and fit's first step
    traces twice (keras/src/backend/tensorflow/trainer.py); the variables and the arithmetic are
    the same either way."""
    model._symbolic_build(data_batch=data_batch)


def compute_loss(model: keras.Model, x, y, y_pred, sample_weight, training: bool):
    """fit's loss of one batch: ``model.compute_loss`` (the compiled loss + each of
    ``model.losses``), called as fit's steps call it, through ``Trainer._compute_loss``
    (keras/src/trainers/trainer.py), which also serves a ``compute_loss`` override written
    without the ``training`` argument (added in Keras 3.3). For the default ``compute_loss`` it
    is ``model.compute_loss(..., training=training)``."""
    return model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                               training=training)


@contextlib.contextmanager
def forward_pass_losses(model: keras.Model, losses):
    """Inside, ``model.losses`` are `losses`: the ones a ``stateless_call(...,
    return_losses=True)`` returned (e.g. activity regularization), which a stateless
    ``compute_loss`` would not otherwise see. fit's JAX step hands them over so, through
    ``_losses_override`` (keras/src/backend/jax/trainer.py:
    ``JAXTrainer.compute_loss_and_updates``; keras/src/layers/layer.py: ``Layer.losses`` returns
    it when set). Weight regularization is computed from the variables and needs nothing."""
    if not losses:
        yield
        return
    model._losses_override = list(losses)
    try:
        yield
    finally:
        model._losses_override = []


def unscale_loss_for_distribution(loss):
    """The loss times the number of replicas in sync, which fit's steps give the loss tracker
    (keras/src/losses/loss.py: ``unscale_loss_for_distribution``, called by
    keras/src/backend/tensorflow/trainer.py: ``TensorFlowTrainer.train_step``/``test_step``):
    the identity on one device. Keras 3.5 has no such function and gives the tracker the loss as
    it is; before 3.15 the distributed loop is refused (``KERAS_GATES["strategy"]``), so only
    one device is left, where both are the identity."""
    if not supports("strategy"):
        return loss
    from keras.src.losses.loss import unscale_loss_for_distribution as unscale

    return unscale(loss)


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)``, but under a backend other than TensorFlow without
    importing TensorFlow: keras/src/utils/rng_utils.py: ``set_random_seed`` also seeds
    TensorFlow whenever it is installed (``if tf.available``, which imports it), for tf.data
    pipelines that the JAX loops here do not use. The rest is done as it does: Keras' global
    seed (``GLOBAL_RANDOM_SEED``, which the global ``SeedGenerator`` is recreated from: the
    seeds of unseeded initializers and ``keras.random`` draws), Python's and NumPy's."""
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    import random

    import numpy as np
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


# ----------------------------------------------------------------------------------------------
# Keras internals: fit's data preparation


def train_validation_split(arrays: tuple, validation_split: float) -> tuple[tuple, tuple]:
    """fit's `validation_split`: the last fraction of each array (None stays None), before any
    shuffling -- keras/src/trainers/data_adapters/array_slicing.py:
    ``train_validation_split``, which keras/src/backend/tensorflow/trainer.py:
    ``TensorFlowTrainer.fit`` calls. Returns (training arrays, validation arrays)."""
    from keras.src.trainers.data_adapters import array_slicing

    return array_slicing.train_validation_split(arrays, validation_split=validation_split)


def fit_data_adapter(x, y, batch_size: int, shuffle=True):
    """The data adapter fit makes for NumPy arrays (keras/src/trainers/data_adapters/
    array_data_adapter.py: ``ArrayDataAdapter``, chosen by keras/src/trainers/data_adapters/
    __init__.py: ``get_data_adapter``); its ``get_tf_dataset()`` is the ``tf.data`` pipeline
    fit's epoch iterator reads its batches from."""
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    return ArrayDataAdapter(x, y, batch_size=batch_size, shuffle=shuffle)


def class_weight_to_sample_weights(y, class_weight: dict):
    """fit's `class_weight` as one weight per sample of `y` -- keras/src/trainers/data_adapters/
    data_adapter_utils.py: ``class_weight_to_sample_weights``, which keras/src/trainers/
    data_adapters/array_data_adapter.py: ``ArrayDataAdapter.__init__`` calls."""
    from keras.src.trainers.data_adapters import data_adapter_utils

    return data_adapter_utils.class_weight_to_sample_weights(y, class_weight)


# ----------------------------------------------------------------------------------------------
# TensorFlow internals: the profiler's trace format


def read_xspace(trace_file):
    """A profiler trace (``.xplane.pb``, what ``tf.profiler.experimental`` writes) parsed with
    the protobuf class TensorFlow ships for it, ``XSpace`` in
    tensorflow/tsl/profiler/protobuf/xplane_pb2.py (no public module exports it)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(trace_file).read_bytes())
    return space
