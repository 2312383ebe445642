"""helpers.training.reuse: one model and one traced step per method, trained fold after fold,
gives every fold the History and weights a fresh model gives, bit for bit, for fit, the
article's loop, the matched loop and two of the ablation's variants (with steps_per_execution, as
the ablation command runs them); and it traces nothing new after the first fold.

Fold 0 of a `FoldTrainer` is a fresh model's own run; fold 1 is the reused one, compared with a
fresh ``create_cnn(seed=1)`` trained by the method's own training function. The two folds have
different numbers of samples (partial batches of other sizes), as stratified folds may.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.data import load_mnist
from helpers.model import create_cnn
from helpers.training import METHODS, FoldTrainer, tape_loop_trainer

BATCH = 32


@pytest.fixture(scope="module")
def folds():
    x, y = load_mnist("train", subset=200, seed=0)
    # (train, validation) of fold 0 and of fold 1: other samples, other sizes
    return [((x[:70], y[:70]), (x[150:170], y[150:170])),
            ((x[70:150], y[70:150]), (x[170:], y[170:]))]


def _train(train, fold, data):
    train_data, val_data = data[fold]
    return train(create_cnn(seed=fold), train_data, val_data, epochs=1, batch_size=BATCH,
                 seed=fold, verbose=0)


def _traced_functions(reused: FoldTrainer):
    """The functions the fold trainer's training and validation run."""
    if reused.method == "fit":
        return [reused.model.train_function, reused.model.test_function]
    return [reused.trainer.train_function, reused.trainer.evaluator.step]


def _tracing_counts(functions):
    """The traces of each tf.function (fit's ``train_function`` is a Python function around
    Keras' own tf.function: it has none to count, its identity is checked)."""
    return [f.experimental_get_tracing_count() for f in functions
            if hasattr(f, "experimental_get_tracing_count")]


def _assert_identical(history, weights, fresh_history, fresh_weights):
    assert history.keys() == fresh_history.keys()
    for key in history:
        if key != "seconds":
            assert history[key] == fresh_history[key], key
    for mine, theirs in zip(weights, fresh_weights, strict=True):
        np.testing.assert_array_equal(mine, theirs)


# The ablation's 8 variants differ from naive and matched only in the four switches, which those
# two cover on and off; one variant of each family checks steps_per_execution=2 (as the ablation
# command runs them), on the pinned versions.
@pytest.mark.parametrize("method, steps_per_execution", [
    ("fit", 1), ("naive", 1), ("matched", 1),
    *(pytest.param(variant, 2, marks=pytest.mark.pinned)
      for variant in ("naive+dropout", "matched-shuffle")),
])
def test_second_fold_trains_as_a_fresh_model(method, steps_per_execution, folds):
    reused = FoldTrainer(method, steps_per_execution=steps_per_execution)
    _train(reused, 0, folds)
    traced = _traced_functions(reused)
    traces = _tracing_counts(traced)
    history = _train(reused, 1, folds)
    assert all(f is g for f, g in zip(traced, _traced_functions(reused), strict=True))
    assert _tracing_counts(traced) == traces  # nothing traced again
    options = {} if method == "fit" else {"steps_per_execution": steps_per_execution}
    fresh = create_cnn(seed=1)
    (train_data, val_data) = folds[1]
    fresh_history = METHODS[method](fresh, train_data, val_data, epochs=1, batch_size=BATCH,
                                    seed=1, verbose=0, **options)
    _assert_identical(history, reused.model.get_weights(), fresh_history, fresh.get_weights())


def test_reuse_for_other_options_is_refused(folds):
    (train_data, val_data) = folds[0]
    model = create_cnn(seed=0)
    trainer = tape_loop_trainer(model, train_data, val_data, batch_size=BATCH, seed=0,
                                fixes=())
    with pytest.raises(ValueError, match="differs in: fixes, batch_size"):
        tape_loop_trainer(model, train_data, val_data, batch_size=BATCH + 1, seed=0,
                          reuse=trainer)
    with pytest.raises(ValueError, match="differs in: model"):
        tape_loop_trainer(create_cnn(seed=1), train_data, val_data, batch_size=BATCH, seed=0,
                          fixes=(), reuse=trainer)
