"""helpers.training: the matched tape loop reproduces model.fit; the naive loop differs as expected.

All runs use 640 training + 160 validation MNIST images and 2 epochs. Both fit and the matched
loop are given the same batch order (`epoch_orders`), once with a batch size that divides 640 (64)
and once with one that leaves a partial last batch (50).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import max_difference

from helpers.model import create_cnn
from helpers.training import (
    DIFFERENCE_KEYS,
    HISTORY_KEYS,
    epoch_orders,
    tape_loop_trainer,
    train_fit,
    train_matched,
    train_naive,
)

EPOCHS = 2
ORDER_SEED = 1
MODEL_SEED = 3
N_TRAIN = 640


@dataclass
class Run:
    history: dict
    model: keras.Model
    initial: list  # model.variables before training, as NumPy arrays
    variables: list = field(default_factory=list)  # after training
    optimizer_variables: list = field(default_factory=list)
    iterations: int = 0
    tracing_count: int | None = None
    step: object = None  # the matched loop's compiled function, when there is one


def run(train, make_model, data, batch_size, epochs=EPOCHS, seed=0, **kwargs) -> Run:
    model = make_model()
    initial = [v.numpy().copy() for v in model.variables]
    if train is train_matched and kwargs.get("compiled", True):
        # what train_matched runs (its EMA finalization aside: no EMA here), keeping the
        # Trainer to look at its compiled function
        trainer = tape_loop_trainer(model, *data, batch_size=batch_size, seed=seed,
                                    fixes=DIFFERENCE_KEYS, **kwargs)
        history = trainer.train(epochs)
    else:
        trainer = None
        history = train(model, *data, epochs=epochs, batch_size=batch_size, seed=seed, **kwargs)
    result = Run(history, model, initial)
    result.variables = [v.numpy().copy() for v in model.variables]
    result.optimizer_variables = [v.numpy().copy() for v in model.optimizer.variables]
    result.iterations = int(model.optimizer.iterations.numpy())
    if trainer is not None:
        result.step = trainer.train_function
        result.tracing_count = result.step.experimental_get_tracing_count()
    return result


def max_history_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b) == {*HISTORY_KEYS, "seconds"}
    assert all(len(a[key]) == len(b[key]) for key in a)
    return max(float(np.max(np.abs(np.subtract(a[key], b[key])))) for key in HISTORY_KEYS)


def orders():
    """The batch order that fit and the matched loop are both given."""
    return epoch_orders(N_TRAIN, EPOCHS, ORDER_SEED)


class Cache:
    """Each training run once per module, made only when a test asks for it."""

    def __init__(self, makers):
        self.makers, self.results = makers, {}

    def __getitem__(self, key):
        if key not in self.results:
            self.results[key] = self.makers[key[0]](*key[1:])
        return self.results[key]


# --- the article's CNN ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn(small_split):
    def make():
        return create_cnn(seed=MODEL_SEED)

    return Cache({
        "fit": lambda bs: run(train_fit, make, small_split, bs, batch_orders=orders()),
        "matched": lambda bs: run(train_matched, make, small_split, bs, batch_orders=orders()),
        # 13 batches of 50 per epoch, 5 per call: calls of 5, 5 and 3 (the partial batch last)
        "grouped": lambda bs: run(train_matched, make, small_split, bs, batch_orders=orders(),
                                  steps_per_execution=5),
        "eager": lambda bs: run(train_matched, make, small_split, bs, batch_orders=orders(),
                                compiled=False),
        "naive": lambda bs: run(train_naive, make, small_split, bs),
        # train_matched itself, where run() otherwise keeps the Trainer it runs
        "function": lambda bs: run(lambda *args, **kwargs: train_matched(*args, **kwargs), make,
                                   small_split, bs, batch_orders=orders()),
    })


@pytest.mark.parametrize("batch_size", [64, 50])
def test_matched_loop_gives_fit_history_exactly(cnn, batch_size):
    fit, matched = cnn["fit", batch_size], cnn["matched", batch_size]
    assert len(fit.history["loss"]) == EPOCHS
    assert max_history_difference(fit.history, matched.history) == 0.0


@pytest.mark.parametrize("batch_size", [64, 50])
def test_matched_loop_gives_fit_weights_exactly(cnn, batch_size):
    fit, matched = cnn["fit", batch_size], cnn["matched", batch_size]
    # Both started from the same variables (create_cnn is seeded) ...
    assert max_difference(fit.initial, matched.initial) == 0.0
    # ... and training moved them (so the comparison below means something).
    assert max_difference(fit.initial, fit.variables) > 0.0
    assert max_difference(fit.variables, matched.variables) == 0.0
    assert max_difference(fit.optimizer_variables, matched.optimizer_variables) == 0.0
    assert fit.iterations == matched.iterations == EPOCHS * math.ceil(N_TRAIN / batch_size)


@pytest.mark.parametrize("batch_size", [64, 50])
def test_dropout_seed_state_is_identical_and_advanced(cnn, batch_size):
    fit, matched = cnn["fit", batch_size], cnn["matched", batch_size]
    paths = [v.path for v in fit.model.variables]
    (index,) = [i for i, path in enumerate(paths) if "seed_generator_state" in path]
    np.testing.assert_array_equal(fit.variables[index], matched.variables[index])
    # Dropout ran in training mode: its seed generator moved on.
    assert not np.array_equal(fit.initial[index], fit.variables[index])


def test_train_matched_is_the_trainer_it_builds(cnn):
    trainer, function = cnn["matched", 50], cnn["function", 50]
    assert max_history_difference(trainer.history, function.history) == 0.0
    assert max_difference(trainer.variables, function.variables) == 0.0


def test_steps_per_execution_changes_nothing_but_the_calls(cnn):
    fit, grouped = cnn["fit", 50], cnn["grouped", 50]
    assert max_history_difference(fit.history, grouped.history) == 0.0
    assert max_difference(fit.variables, grouped.variables) == 0.0
    assert max_difference(fit.optimizer_variables, grouped.optimizer_variables) == 0.0
    assert grouped.iterations == fit.iterations == EPOCHS * 13
    assert grouped.tracing_count == 1  # the group with the partial batch reuses the trace


def test_steps_per_execution_below_one_is_refused(small_split):
    with pytest.raises(ValueError, match="steps_per_execution=0"):
        train_matched(create_cnn(0), *small_split, epochs=1, batch_size=64, seed=0,
                      steps_per_execution=0)


def test_eager_matched_loop_is_float_close_to_fit(cnn):
    fit, eager = cnn["fit", 50], cnn["eager", 50]
    assert max_history_difference(fit.history, eager.history) < 1e-5
    # Adam divides by sqrt(v), which amplifies rounding in small gradients; 1e-4 was measured.
    assert max_difference(fit.variables, eager.variables) < 5e-4
    assert eager.iterations == fit.iterations


def test_matched_history_is_a_running_mean_of_every_sample(cnn):
    """fit's History: per-epoch values, every metric a float, accuracies in [0, 1]."""
    history = cnn["matched", 50].history
    assert all(len(history[key]) == EPOCHS for key in (*HISTORY_KEYS, "seconds"))
    # 640 samples: an accuracy is a multiple of 1/640 (up to float32 rounding).
    for value in history["accuracy"]:
        assert abs(value * N_TRAIN - round(value * N_TRAIN)) < 1e-3
    for value in history["val_accuracy"]:
        assert abs(value * 160 - round(value * 160)) < 1e-3
    assert all(seconds > 0 for seconds in history["seconds"])


# --- another architecture: BatchNormalization, an L2 penalty, other optimizers, sparse labels ----

def make_bn_model(optimizer: str, seed: int = MODEL_SEED) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(8, 3, strides=2),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax",
                           kernel_regularizer=keras.regularizers.L2(1e-3)),
    ], name="bn_l2")
    optimizers = {
        "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
        "rmsprop": lambda: keras.optimizers.RMSprop(1e-3),
    }
    model.compile(optimizer=optimizers[optimizer](), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def bn(small_split_sparse):
    def trained(train, optimizer, batch_size, **kwargs):
        return run(train, lambda: make_bn_model(optimizer), small_split_sparse, batch_size,
                   **kwargs)

    return Cache({
        "fit": lambda opt, bs: trained(train_fit, opt, bs, batch_orders=orders()),
        "matched": lambda opt, bs: trained(train_matched, opt, bs, batch_orders=orders()),
        "naive": lambda opt, bs: trained(train_naive, opt, bs),
    })


@pytest.fixture
def no_arithmetic_rewrites():
    """Turn off Grappler's arithmetic optimizer for the graphs built inside the test.

    It regroups sums (e.g. the several gradient contributions through BatchNormalization's batch
    statistics) according to the shape of the whole graph; fit's step and the matched step are
    different graphs, so with BatchNormalization it can sum the same terms in another order and
    the results then differ in the last bits (~1e-7). With it off, both compute the same
    operations in the same order, and the results are bit-identical.
    """
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
    yield
    tf.config.optimizer.set_experimental_options(
        {"arithmetic_optimization": before.get("arithmetic_optimization", True)}
    )


def test_bn_model_has_a_regularization_loss_and_is_seeded():
    a, b = make_bn_model("rmsprop", seed=5), make_bn_model("rmsprop", seed=5)
    assert len(a.losses) == 1
    assert any("moving_mean" in v.path for v in a.non_trainable_variables)
    assert max_difference([v.numpy().copy() for v in a.variables],
                          [v.numpy().copy() for v in b.variables]) == 0.0


@pytest.mark.parametrize("optimizer, batch_size", [("sgd_momentum", 50), ("rmsprop", 64)])
def test_matched_loop_reproduces_fit_exactly_on_a_bn_model(
    small_split_sparse, no_arithmetic_rewrites, optimizer, batch_size
):
    def make():
        return make_bn_model(optimizer)

    fit = run(train_fit, make, small_split_sparse, batch_size, batch_orders=orders())
    matched = run(train_matched, make, small_split_sparse, batch_size, batch_orders=orders())
    assert max_history_difference(fit.history, matched.history) == 0.0
    assert max_difference(fit.initial, fit.variables) > 0.0
    assert max_difference(fit.variables, matched.variables) == 0.0
    assert max_difference(fit.optimizer_variables, matched.optimizer_variables) == 0.0
    assert fit.iterations == matched.iterations == EPOCHS * math.ceil(N_TRAIN / batch_size)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "rmsprop"])
def test_matched_loop_is_float_close_to_fit_on_a_bn_model(bn, optimizer):
    """With Grappler as it is by default: equal up to the order of float additions."""
    fit, matched = bn["fit", optimizer, 50], bn["matched", optimizer, 50]
    assert max_history_difference(fit.history, matched.history) < 1e-5
    assert max_difference(fit.variables, matched.variables) < 1e-5
    assert fit.iterations == matched.iterations == EPOCHS * math.ceil(N_TRAIN / 50)


def _moving_statistics(result: Run):
    indices = [i for i, v in enumerate(result.model.variables)
               if v.path.endswith(("moving_mean", "moving_variance"))]
    assert len(indices) == 2
    return [result.initial[i] for i in indices], [result.variables[i] for i in indices]


def test_naive_loop_leaves_batchnorm_statistics_alone(bn):
    before, after = _moving_statistics(bn["naive", "rmsprop", 50])
    for start, end in zip(before, after):
        np.testing.assert_array_equal(start, end)
    np.testing.assert_array_equal(after[0], np.zeros(8, np.float32))  # the initial values
    np.testing.assert_array_equal(after[1], np.ones(8, np.float32))


@pytest.mark.parametrize("method", ["fit", "matched"])
def test_fit_and_matched_update_batchnorm_statistics(bn, method):
    before, after = _moving_statistics(bn[method, "rmsprop", 50])
    for start, end in zip(before, after):
        assert np.all(start != end)


# --- the naive (article) loop --------------------------------------------------------------------

def test_naive_loop_drops_the_partial_batch(cnn):
    naive, fit = cnn["naive", 50], cnn["fit", 50]
    assert naive.iterations == EPOCHS * (N_TRAIN // 50) == 24
    assert fit.iterations == EPOCHS * math.ceil(N_TRAIN / 50) == 26
    assert len(naive.history["loss"]) == EPOCHS
    assert all(np.isfinite(naive.history[key]).all() for key in HISTORY_KEYS)


def test_naive_loop_runs_dropout_in_inference_mode(cnn):
    """`model(x)` with training unset: Dropout never draws, its seed state does not move."""
    naive = cnn["naive", 50]
    paths = [v.path for v in naive.model.variables]
    (index,) = [i for i, path in enumerate(paths) if "seed_generator_state" in path]
    np.testing.assert_array_equal(naive.initial[index], naive.variables[index])
    assert max_difference(naive.initial, naive.variables) > 0.0  # the weights did train


def make_linear(learning_rate: float, seed: int = 0) -> keras.Model:
    """No Dropout, no BatchNormalization: training mode changes nothing."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_naive_loop_takes_batch_size_times_larger_steps(small_split):
    """The article differentiates the per-sample loss vector, i.e. the batch *sum*: with plain SGD
    one naive step equals one fit (mean-loss) step with the learning rate times the batch size."""
    (x, y), val = small_split
    batch = 32
    one_batch = ((x[:batch], y[:batch]), val)
    identity = np.arange(batch)[np.newaxis]

    naive = run(train_naive, lambda: make_linear(0.01), one_batch, batch, epochs=1)
    fit = run(train_fit, lambda: make_linear(0.01), one_batch, batch, epochs=1,
              batch_orders=identity)
    fit_scaled = run(train_fit, lambda: make_linear(0.01 * batch), one_batch, batch, epochs=1,
                     batch_orders=identity)
    assert naive.iterations == fit.iterations == 1
    for w0, w_naive, w_fit, w_scaled in zip(naive.initial, naive.variables, fit.variables,
                                           fit_scaled.variables):
        step_naive, step_fit, step_scaled = w_naive - w0, w_fit - w0, w_scaled - w0
        assert np.max(np.abs(step_naive)) > 1e-2  # a real step, not a no-op
        np.testing.assert_allclose(step_naive, step_scaled, rtol=1e-3, atol=1e-7)
        # fit's step is 32 times smaller; float32 spacing near the weights (~1e-8) times 32.
        np.testing.assert_allclose(step_naive, batch * step_fit, rtol=1e-3, atol=1e-6)
    # The naive loop's History loss is the mean per-sample loss of that one batch.
    assert naive.history["loss"][0] == pytest.approx(fit.history["loss"][0], rel=1e-6)


def test_naive_loop_ignores_the_seed_and_keeps_file_order(small_split):
    (x, y), val = small_split
    data = ((x[:200], y[:200]), val)
    a = run(train_naive, lambda: make_linear(0.001), data, 50, seed=0)
    b = run(train_naive, lambda: make_linear(0.001), data, 50, seed=123)
    assert max_difference(a.variables, b.variables) == 0.0
    # fit without shuffling, in file order, with the summed loss (lr x batch) is the same training.
    in_order = np.tile(np.arange(200), (EPOCHS, 1))
    c = run(train_fit, lambda: make_linear(0.001 * 50), data, 50, batch_orders=in_order)
    assert max_difference(a.variables, c.variables) < 1e-5


def test_eager_naive_loop_matches_compiled(small_split):
    (x, y), val = small_split
    data = ((x[:120], y[:120]), val)
    compiled = run(train_naive, lambda: make_linear(0.001), data, 50)
    eager = run(train_naive, lambda: make_linear(0.001), data, 50, compiled=False)
    assert eager.iterations == compiled.iterations == EPOCHS * 2
    assert max_history_difference(compiled.history, eager.history) < 1e-5
    assert max_difference(compiled.variables, eager.variables) < 1e-6


# --- tracing, seeds and argument checks ----------------------------------------------------------

def test_matched_step_never_retraces(cnn, small_split):
    """Across epochs, a partial last batch, any other batch length and other data of the same
    shapes (another fold): no new trace."""
    result = cnn["matched", 50]
    step = result.step
    assert step.experimental_get_tracing_count() == result.tracing_count
    (x, y), (x_val, y_val) = small_split
    step(tf.range(7, dtype=tf.int64), x, y)
    step(tf.constant([3, 1, 4], dtype=tf.int64), x_val, y_val)
    assert step.experimental_get_tracing_count() == result.tracing_count


def test_matched_step_traces_once_when_the_optimizer_is_built(small_split):
    def make():
        model = create_cnn(seed=MODEL_SEED)
        model.optimizer.build(model.trainable_variables)  # as fit does before its first step
        return model

    result = run(train_matched, make, small_split, 50, batch_orders=orders())
    assert result.tracing_count == 1


def test_matched_step_traces_once_on_a_fresh_model(cnn):
    assert cnn["matched", 50].tracing_count == 1


def test_matched_seed_gives_epoch_orders(small_split):
    (x, y), val = small_split
    data = ((x[:150], y[:150]), val)
    by_seed = run(train_matched, lambda: make_linear(0.01), data, 40, seed=9)
    by_orders = run(train_matched, lambda: make_linear(0.01), data, 40,
                    batch_orders=epoch_orders(150, EPOCHS, 9))
    other_seed = run(train_matched, lambda: make_linear(0.01), data, 40, seed=10)
    assert max_difference(by_seed.variables, by_orders.variables) == 0.0
    assert max_difference(by_seed.variables, other_seed.variables) > 0.0


def test_epoch_orders():
    a = epoch_orders(10, 3, seed=4)
    assert a.shape == (3, 10)
    for row in a:
        np.testing.assert_array_equal(np.sort(row), np.arange(10))
    assert not np.array_equal(a[0], a[1])  # a new permutation every epoch
    np.testing.assert_array_equal(a, epoch_orders(10, 3, seed=4))
    assert not np.array_equal(a, epoch_orders(10, 3, seed=5))


@pytest.mark.parametrize("train", [train_fit, train_naive, train_matched])
def test_uncompiled_model_is_refused(small_split, train):
    model = create_cnn(seed=0, compile=False)
    with pytest.raises(ValueError, match="not compiled"):
        train(model, *small_split, epochs=1, batch_size=64, seed=0)


@pytest.mark.parametrize("train", [train_fit, train_matched])
@pytest.mark.parametrize("shape", [(EPOCHS + 1, N_TRAIN), (EPOCHS, N_TRAIN - 1), (N_TRAIN,)])
def test_wrong_batch_orders_shape_is_refused(small_split, train, shape):
    model = create_cnn(seed=0)
    bad = np.zeros(shape, dtype=np.int64)
    with pytest.raises(ValueError, match="batch_orders has shape"):
        train(model, *small_split, epochs=EPOCHS, batch_size=64, seed=0, batch_orders=bad)
    assert int(model.optimizer.iterations.numpy()) == 0  # refused before any training
