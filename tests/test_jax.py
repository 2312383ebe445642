"""The JAX loops against fit under Keras' JAX backend (helpers.training.jax_loop).

These run in their own pytest process with KERAS_BACKEND=jax (scripts/test_jax.sh): Keras picks
its backend once, when first imported, so under the TensorFlow run this module is skipped. They
are `pinned`: only the pinned environment has JAX (jax 0.10.2, Keras 3.15.1; requirements.txt),
and the equalities are shown there only.
"""

from __future__ import annotations

import sys

import jax
import keras
import numpy as np
import pytest

if keras.backend.backend() != "jax":
    pytest.skip("JAX backend tests: run by scripts/test_jax.sh (KERAS_BACKEND=jax)",
                allow_module_level=True)

from conftest import max_difference  # noqa: E402

from helpers import compat  # noqa: E402
from helpers.model import create_cnn  # noqa: E402
from helpers.training.fit import epoch_orders, train_fit  # noqa: E402
from helpers.training.jax_loop import (  # noqa: E402
    guide_train_step,
    jax_train_step,
    train_guide_loop,
    train_jax_loop,
)

pytestmark = pytest.mark.pinned

# 250 training images in batches of 64: three full batches and a partial one of 58, so the
# partial batch (one of the four differences) is in every epoch; 64 validation images.
TRAIN, VAL, BATCH, EPOCHS = 250, 64, 64, 2


@pytest.fixture(scope="module")
def data(small_split):
    (x, y), (x_val, y_val) = small_split
    return (x[:TRAIN], y[:TRAIN]), (x_val[:VAL], y_val[:VAL])


@pytest.fixture(scope="module")
def orders():
    return epoch_orders(TRAIN, EPOCHS, seed=0)


def train(method, data, orders, **options):
    """A fresh article CNN (seed 0) trained by `method` on `orders`: (History, model)."""
    model = create_cnn(seed=0)
    history = method(model, *data, epochs=EPOCHS, batch_size=BATCH, seed=0,
                     batch_orders=orders, **options)
    history.pop("seconds")
    return history, model


def all_variables(model):
    """Every variable fit leaves behind: weights, Dropout's seed state, optimizer, metrics."""
    return [v.value for v in (*model.variables, *model.optimizer.variables,
                              *model.metrics_variables)]


@pytest.fixture(scope="module")
def fit_run(data, orders):
    return train(train_fit, data, orders)


def test_matched_jax_loop_equals_fit_bit_for_bit(data, orders, fit_run):
    """Same initial weights and batch order => the same History and every variable, bit for
    bit: the loop's jitted step is fit's (keras/src/backend/jax/trainer.py:
    ``JAXTrainer.train_step``) written with public API, and XLA compiles the same program."""
    fit_history, fit_model = fit_run
    history, model = train(train_jax_loop, data, orders)
    assert history == fit_history
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert max_difference(all_variables(model), all_variables(fit_model)) == 0.0


def test_guide_loop_differs_from_fit_by_training_true_only(data, orders, fit_run):
    """keras.io's JAX guide's step as written leaves ``training`` unset, so Dropout never runs
    and its seed state never advances; adding ``training=True`` and nothing else gives fit's
    History and variables bit for bit."""
    fit_history, fit_model = fit_run
    as_written, as_written_model = train(train_guide_loop, data, orders)
    assert as_written["loss"] != fit_history["loss"]
    assert max_difference(as_written_model.weights, fit_model.weights) > 1e-3
    seed_states = [[v.value for v in model.non_trainable_variables]
                   for model in (create_cnn(seed=0), as_written_model, fit_model)]
    assert max_difference(seed_states[0], seed_states[1]) == 0.0  # Dropout never drew
    assert max_difference(seed_states[0], seed_states[2]) > 0.0

    with_training, model = train(train_jax_loop, data, orders, guide_step=True)
    assert with_training == fit_history
    assert max_difference(all_variables(model), all_variables(fit_model)) == 0.0


def test_losses_of_the_forward_pass_reach_the_loss_as_in_fit(data, orders):
    """An activity regularizer's loss exists only during the forward pass: ``stateless_call``
    returns it, and the step hands it to ``stateless_compute_loss`` as fit's JAX step does
    (`helpers.compat.forward_pass_losses`), in training and in validation (both count it). A
    small dense model, one epoch: bit for bit."""
    def regularized(seed=0):
        compat.set_random_seed(seed)
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(10, activation="softmax"),
                                  keras.layers.ActivityRegularization(l1=0.05)])
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    runs = []
    for method in (train_fit, train_jax_loop):
        model = regularized()
        history = method(model, *data, epochs=1, batch_size=BATCH, seed=0,
                         batch_orders=orders[:1])
        history.pop("seconds")
        runs.append((history, model))
    (fit_history, fit_model), (history, model) = runs
    assert history == fit_history
    assert max_difference(all_variables(model), all_variables(fit_model)) == 0.0


def test_data_parallel_on_two_devices(data, orders, fit_run):
    """``keras.distribution.DataParallel`` on two CPU devices: fit and the matched loop split
    every batch (the partial one too: 29 + 29) between the devices, and are equal to each other
    bit for bit. Both differ from one device by float32 rounding, hence the tolerances: each
    device sums its half of the batch and the halves are then added (an all-reduce), so the
    gradient's sum is grouped differently than on one device; Adam divides by the gradients' root
    mean square, so a last-bit change of a near-zero gradient moves a weight by up to about the
    learning rate times that relative change. Measured: 9e-5 in the weights and 1.5e-5 in
    History after 8 steps; the bounds below are 10 times that, and far below Dropout's effect on
    the validation loss (tests above and notebook A5: differences of 1e-2 and more)."""
    if len(jax.devices()) < 2:
        pytest.skip("needs two devices: XLA_FLAGS=--xla_force_host_platform_device_count=2, "
                    "as scripts/test_jax.sh sets")
    fit_history, fit_model = fit_run
    with keras.distribution.DataParallel(devices=jax.devices()[:2]).scope():
        parallel_fit_history, parallel_fit = train(train_fit, data, orders)
        parallel_loop_history, parallel_loop = train(train_jax_loop, data, orders)
    assert len(parallel_loop.weights[0].value.sharding.device_set) == 2
    assert parallel_loop_history == parallel_fit_history
    assert max_difference(all_variables(parallel_loop), all_variables(parallel_fit)) == 0.0
    assert max_difference(list(parallel_fit_history.values()), list(fit_history.values())) < 2e-4
    assert max_difference(parallel_fit.weights, fit_model.weights) < 1e-3


def test_the_loop_refuses_what_it_cannot_reproduce():
    class CustomStep(keras.Sequential):
        def train_step(self, state, data):
            return super().train_step(state, data)

    custom = CustomStep([keras.Input((3,)), keras.layers.Dense(2)])
    custom.compile(optimizer="adam", loss="mse")
    with pytest.raises(NotImplementedError, match=r"custom train_step \(CustomStep"):
        jax_train_step(custom)
    scaled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    scaled.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()),
                   loss="mse")
    with pytest.raises(NotImplementedError, match="loss scaling"):
        guide_train_step(scaled)
    with pytest.raises(ValueError, match="not compiled"):
        jax_train_step(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


def test_set_random_seed_seeds_keras_without_tensorflow():
    """Keras' global seed generator (unseeded keras.random draws) and NumPy's, reset."""
    draws = []
    for _ in range(2):
        compat.set_random_seed(7)
        draws.append((float(keras.random.uniform(())), np.random.rand()))
    assert draws[0] == draws[1]
    compat.set_random_seed(8)
    assert (float(keras.random.uniform(())), np.random.rand()) != draws[0]


def test_no_tensorflow_was_loaded():
    """Last in this module: the whole JAX session -- the helpers the JAX notebook imports, fit
    and the JAX loops trained above -- loaded no TensorFlow."""
    import helpers.experiments.compare  # noqa: F401
    import helpers.experiments.cv  # noqa: F401
    import helpers.experiments.plots  # noqa: F401
    import helpers.training  # noqa: F401

    assert "jax" in sys.modules
    assert not [name for name in sys.modules if name.split(".")[0] == "tensorflow"]
