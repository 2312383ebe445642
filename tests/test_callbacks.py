"""Keras callbacks in the tape loop mean what they mean in fit, bit for bit.

fit and `train_matched` get the same initial weights (seeded `create_cnn`), the same batch order
(`epoch_orders`) and fresh instances of the same callbacks: EarlyStopping(restore_best_weights),
ReduceLROnPlateau, ModelCheckpoint(save_best_only), CSVLogger and TensorBoard, all on val_loss.
The training set is small (128 images) so that the CNN overfits within a few epochs and every
callback acts: the learning rate is cut and training stops before the last epoch.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import max_difference
from tensorflow.core.util import event_pb2

from helpers.model import create_cnn
from helpers.training import epoch_orders, train_fit, train_matched, train_naive

N_TRAIN = 128
BATCH_SIZE = 32
EPOCHS = 12
MODEL_SEED = 3
ORDER_SEED = 1
# Adam at 1e-2 on 128 images: val_loss bottoms out after a few epochs.
LEARNING_RATE = 1e-2


def data(small_split):
    (x_train, y_train), val = small_split
    return (x_train[:N_TRAIN], y_train[:N_TRAIN]), val


def make_model(learning_rate=LEARNING_RATE):
    model = create_cnn(seed=MODEL_SEED, compile=False)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def make_callbacks(directory: Path):
    directory.mkdir(parents=True)
    return {
        "early_stopping": keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=2, restore_best_weights=True),
        "reduce_lr": keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                        patience=1),
        "checkpoint": keras.callbacks.ModelCheckpoint(
            directory / "best.weights.h5", monitor="val_loss", save_best_only=True,
            save_weights_only=True),
        "csv": keras.callbacks.CSVLogger(directory / "log.csv"),
        "tensorboard": keras.callbacks.TensorBoard(directory / "tensorboard"),
    }


def trained(train, small_split, directory, **kwargs):
    model = make_model()
    callbacks = make_callbacks(directory)
    history = train(model, *data(small_split), epochs=EPOCHS, batch_size=BATCH_SIZE, seed=0,
                    batch_orders=epoch_orders(N_TRAIN, EPOCHS, ORDER_SEED),
                    callbacks=list(callbacks.values()), **kwargs)
    return dict(model=model, callbacks=callbacks, history=history, directory=directory,
                variables=[v.numpy() for v in model.variables])


@pytest.fixture(scope="module")
def runs(small_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("callbacks")
    return {name: trained(train, small_split, root / name)
            for name, train in (("fit", train_fit), ("loop", train_matched))}


def test_every_callback_acted(runs):
    """The comparison below is not vacuous: training stopped early and the LR was cut."""
    history = runs["fit"]["history"]
    stopped = runs["fit"]["callbacks"]["early_stopping"].stopped_epoch
    assert 0 < stopped < EPOCHS - 1
    assert len(history["loss"]) == stopped + 1
    assert min(history["learning_rate"]) < LEARNING_RATE
    # the best epoch is not the last one, so restore_best_weights restored something
    assert int(np.argmin(history["val_loss"])) < stopped


def test_same_stopping_epoch_and_history(runs):
    fit, loop = runs["fit"], runs["loop"]
    assert (loop["callbacks"]["early_stopping"].stopped_epoch
            == fit["callbacks"]["early_stopping"].stopped_epoch)
    assert set(loop["history"]) == set(fit["history"])
    for key in fit["history"]:
        if key != "seconds":
            assert loop["history"][key] == fit["history"][key], key


def test_same_learning_rate_changes(runs):
    fit, loop = runs["fit"], runs["loop"]
    assert loop["history"]["learning_rate"] == fit["history"]["learning_rate"]
    assert (float(loop["model"].optimizer.learning_rate)
            == float(fit["model"].optimizer.learning_rate))


def test_same_restored_weights(runs):
    fit, loop = runs["fit"], runs["loop"]
    assert max_difference(fit["variables"], loop["variables"]) == 0.0
    assert (max_difference(fit["callbacks"]["early_stopping"].best_weights,
                           loop["callbacks"]["early_stopping"].best_weights) == 0.0)


def test_best_checkpoints_hold_equal_weights(runs):
    loaded = {}
    for name, run in runs.items():
        model = create_cnn(seed=MODEL_SEED, compile=False)
        model.load_weights(run["directory"] / "best.weights.h5")
        loaded[name] = model.get_weights()
    assert max_difference(loaded["fit"], loaded["loop"]) == 0.0
    # save_best_only kept the best epoch, which restore_best_weights also restored
    assert max_difference(loaded["loop"], runs["loop"]["model"].get_weights()) == 0.0


def test_csv_logs_are_identical(runs):
    fit, loop = (runs[name]["directory"] / "log.csv" for name in ("fit", "loop"))
    text = loop.read_text()
    assert text == fit.read_text()
    assert len(text.splitlines()) == 1 + len(runs["loop"]["history"]["loss"])


def scalars(directory: Path) -> dict[str, list[float]]:
    """Every scalar in the TensorBoard event files under `directory`, by subfolder/tag, read
    with tf.data (no TensorBoard needed to read them)."""
    values = {}
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            for value in event_pb2.Event.FromString(record.numpy()).summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(f"{path.parent.name}/{value.tag}", []).append(
                        float(tf.make_ndarray(value.tensor)))
    return values


def test_tensorboard_event_files_are_readable_and_match_fit(runs):
    fit, loop = (scalars(runs[name]["directory"] / "tensorboard") for name in ("fit", "loop"))
    history = runs["loop"]["history"]
    assert loop["train/epoch_loss"] == history["loss"]
    assert loop["validation/epoch_loss"] == history["val_loss"]
    assert loop["validation/evaluation_accuracy_vs_iterations"] == history["val_accuracy"]
    assert len(loop["train/epoch_learning_rate"]) == len(history["loss"])
    assert loop == fit


class StopAtBatch(keras.callbacks.Callback):
    """Sets model.stop_training in the middle of an epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.model.stop_training = True


def test_stop_training_mid_epoch_is_honoured_as_fit_does(small_split):
    """fit leaves the epoch after that batch, still validates, then stops."""
    results = {}
    for train in (train_fit, train_matched):
        model = make_model()
        history = train(model, *data(small_split), epochs=3, batch_size=BATCH_SIZE, seed=0,
                        batch_orders=epoch_orders(N_TRAIN, 3, ORDER_SEED),
                        callbacks=[StopAtBatch(epoch=1, batch=1)])
        results[train.__name__] = (history, model)
    (fit_history, fit_model), (loop_history, loop_model) = results.values()
    assert len(loop_history["loss"]) == len(fit_history["loss"]) == 2
    assert int(loop_model.optimizer.iterations) == int(fit_model.optimizer.iterations) == 4 + 2
    assert all(loop_history[key] == fit_history[key] for key in fit_history if key != "seconds")
    assert max_difference(fit_model.variables, loop_model.variables) == 0.0


def progress_text(text: str) -> str:
    """fit's progress lines without their timings."""
    return re.sub(r"\d+(\.\d+)?m?s(/step)?", "<time>", text)


def test_progress_bar_is_keras_own(small_split, capsys):
    """verbose=2 prints the same lines as fit (timings aside): ProgbarLogger prints both."""
    printed = {}
    for train in (train_fit, train_matched):
        train(make_model(), *data(small_split), epochs=2, batch_size=BATCH_SIZE, seed=0,
              batch_orders=epoch_orders(N_TRAIN, 2, ORDER_SEED), verbose=2)
        printed[train.__name__] = progress_text(capsys.readouterr().out)
    assert "Epoch 2/2" in printed["train_fit"]
    assert printed["train_matched"] == printed["train_fit"]


def test_naive_loop_drives_the_same_callbacks(small_split):
    """The article's loop takes callbacks too: the hooks see its own (different) logs."""
    model = make_model()
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    history = train_naive(model, *data(small_split), epochs=EPOCHS, batch_size=BATCH_SIZE,
                          seed=0, callbacks=[stopper])
    # min_delta=10: no epoch counts as an improvement, so it stops after the second epoch
    assert stopper.stopped_epoch == 1 and len(history["loss"]) == 2
    assert model.history.history["loss"] == history["loss"]


def test_learning_rate_schedule_matches_fit(small_split):
    """A LearningRateSchedule given to the optimizer is evaluated at optimizer.iterations by
    the optimizer itself, so the loop needs nothing to follow it (keras/src/optimizers/
    base_optimizer.py, `_get_current_learning_rate`)."""
    results = {}
    for method in (train_fit, train_matched):
        schedule = keras.optimizers.schedules.ExponentialDecay(
            LEARNING_RATE, decay_steps=2, decay_rate=0.5)
        model = create_cnn(seed=MODEL_SEED, compile=False)
        model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        history = method(model, *data(small_split), epochs=3, batch_size=BATCH_SIZE, seed=0,
                         batch_orders=epoch_orders(N_TRAIN, 3, ORDER_SEED))
        results[method.__name__] = (history, model)
    (fit_history, fit_model), (loop_history, loop_model) = results.values()
    assert all(loop_history[key] == fit_history[key] for key in fit_history if key != "seconds")
    assert max_difference(fit_model.variables, loop_model.variables) == 0.0
    # the schedule really decayed: 12 steps of decay_steps=2 halve the rate 6 times
    assert float(loop_model.optimizer.learning_rate) == pytest.approx(LEARNING_RATE / 2 ** 6)
