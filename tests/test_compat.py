"""helpers.compat: each private Keras/TensorFlow symbol the project uses, checked against the
installed version -- that it exists and still does what the project relies on -- so that an
upgrade that moves or changes one fails here, by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import compat

REPO = Path(__file__).resolve().parent.parent


def dense_model(**compile_options) -> keras.Model:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  **compile_options)
    return model


def data(samples=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, samples)]
    return x, y


def test_loss_tracker_is_the_mean_fit_updates():
    keras.utils.set_random_seed(0)
    model = dense_model()
    tracker = compat.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean) and tracker.name == "loss"
    history = model.fit(*data(), batch_size=8, epochs=1, verbose=0)
    assert float(tracker.result()) == history.history["loss"][0]


def test_loss_tracker_of_an_uncompiled_model_is_refused():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="no loss tracker"):
        compat.loss_tracker(keras.Model(inputs, keras.layers.Dense(3)(inputs)))


def test_compile_argument_is_what_compile_was_given():
    optimizer = keras.optimizers.SGD()
    model = dense_model(loss_weights=[2.0])
    assert compat.compile_argument(model, "loss_weights") == [2.0]
    assert compat.compile_argument(dense_model(), "loss_weights") is None
    model.compile(optimizer=optimizer, loss="mse")
    assert compat.compile_argument(model, "optimizer") is optimizer  # not serialized


def test_build_like_fit_builds_without_computing():
    model = dense_model()
    before = [w.copy() for w in model.get_weights()]
    assert not model.optimizer.built
    compat.build_like_fit(model, data())
    assert model.optimizer.built and model.optimizer.variables
    assert all(metric.variables for metric in model.metrics)  # loss tracker and compiled metrics
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert int(model.optimizer.iterations) == 0


def test_compute_loss_is_fits_and_serves_old_overrides():
    x, y = data()
    model = dense_model()
    y_pred = model(x)
    loss = compat.compute_loss(model, x, y, y_pred, None, training=True)
    assert float(loss) == float(model.compute_loss(x, y, y_pred, None, training=True))

    class OldSignature(keras.Model):  # a compute_loss override from before Keras 3.3
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
            return 2 * super().compute_loss(x, y, y_pred, sample_weight)

    old = OldSignature(model.inputs, model.outputs)
    old.compile(optimizer="adam", loss="categorical_crossentropy")
    assert float(compat.compute_loss(old, x, y, y_pred, None, training=False)) == 2 * float(loss)


def test_unscale_loss_is_the_identity_on_one_device():
    assert float(compat.unscale_loss_for_distribution(tf.constant(1.25))) == 1.25


@pytest.mark.pinned  # Keras' function, which the distributed loop needs (KERAS_GATES["strategy"])
def test_unscale_loss_multiplies_by_the_replicas():
    # a fresh process: the CPU must be split into two devices before TensorFlow starts
    script = (
        "from helpers.training.distributed import mirrored_strategy\n"
        "import tensorflow as tf\n"
        "from helpers import compat\n"
        "strategy = mirrored_strategy(2)\n"
        "result = strategy.run(lambda: compat.unscale_loss_for_distribution(tf.constant(1.5)))\n"
        "print([float(v) for v in strategy.experimental_local_results(result)])\n"
    )
    output = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, check=True, env={"PYTHONPATH": str(REPO),
                                                         "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert output.stdout.strip().splitlines()[-1] == "[3.0, 3.0]"


def test_train_validation_split_takes_the_last_fraction_unshuffled():
    x, y = np.arange(10), np.arange(10) * 2
    (x_train, y_train, weights), (x_val, y_val, val_weights) = compat.train_validation_split(
        (x, y, None), 0.2)
    np.testing.assert_array_equal(x_train, np.arange(8))
    np.testing.assert_array_equal(y_train, np.arange(8) * 2)
    np.testing.assert_array_equal(x_val, [8, 9])
    np.testing.assert_array_equal(y_val, [16, 18])
    assert weights is None and val_weights is None


@pytest.mark.parametrize("samples, batch_dimension", [(200, None), (192, 64)])
def test_fit_data_adapter_is_the_one_fit_uses(samples, batch_dimension):
    """fit picks this adapter for arrays; its batches have an unknown batch dimension only when
    there is a partial batch (notebook 05, speed)."""
    from keras.src.trainers.data_adapters import get_data_adapter

    x, y = data(samples)
    adapter = compat.fit_data_adapter(x, y, batch_size=64)
    assert type(adapter) is type(get_data_adapter(x, y, batch_size=64, shuffle=True))
    assert adapter.get_tf_dataset().element_spec[0].shape[0] == batch_dimension


@pytest.mark.parametrize("labels", ["one_hot", "sparse"])
def test_class_weight_gives_each_sample_its_class_weight(labels):
    classes = np.array([0, 2, 1, 2])
    y = np.eye(3, dtype="float32")[classes] if labels == "one_hot" else classes
    weights = compat.class_weight_to_sample_weights(y, {0: 0.5, 1: 1.0, 2: 3.0})
    np.testing.assert_array_equal(np.asarray(weights), [0.5, 3.0, 1.0, 3.0])


def test_read_xspace_reads_a_profiler_trace(tmp_path):
    tf.profiler.experimental.start(str(tmp_path))
    try:
        tf.linalg.matmul(tf.ones((8, 8)), tf.ones((8, 8))).numpy()
    finally:
        tf.profiler.experimental.stop()
    (trace,) = tmp_path.glob("plugins/profile/*/*.xplane.pb")
    space = compat.read_xspace(trace)
    names = {metadata.name for plane in space.planes
             for metadata in plane.event_metadata.values()}
    assert any("MatMul" in name for name in names)
