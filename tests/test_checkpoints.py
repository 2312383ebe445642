"""helpers.training.checkpoints: a run killed mid-training and resumed ends exactly where an
uninterrupted
run ends -- weights, optimizer state and History, bit for bit.

The SIGKILL test runs tests/resume_worker.py (256 images, 4 epochs) three times: uninterrupted
(in the test's process, to save a TensorFlow start-up); in a subprocess made to wait in the
middle of epoch 3 (after epoch 2's checkpoint was written) and killed with SIGKILL; in a new
subprocess on the killed run's directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import compat
from helpers.model import create_cnn
from helpers.training import epoch_orders, train_fit, train_matched
from helpers.training.checkpoints import (
    TrainingCheckpoint,
    seed_generator_states,
    train_resumable,
    training_settings,
)

WORKER = Path(__file__).resolve().parent / "resume_worker.py"
TIMEOUT = 300  # seconds for one worker run on a busy 2-core machine


def worker(directory: Path, result: Path, *hang_at) -> subprocess.Popen:
    command = [sys.executable, str(WORKER), str(directory), str(result)]
    if hang_at:
        command += ["--hang-at", *map(str, hang_at)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, output.decode()


def load(result: Path) -> tuple[dict, list]:
    with np.load(result) as saved:
        history = json.loads(str(saved["history"]))
        arrays = [saved[key] for key in sorted(k for k in saved.files if k != "history")]
    return history, arrays


def run_in_process(directory: Path, result: Path) -> None:
    spec = importlib.util.spec_from_file_location("resume_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run(directory, result)


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    run_in_process(tmp_path / "uninterrupted", tmp_path / "uninterrupted.npz")

    marker = tmp_path / "hanging"
    killed = worker(tmp_path / "killed", tmp_path / "killed.npz", 2, 1, marker)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():  # the worker is about to train batch 1 of epoch 3
            assert killed.poll() is None, killed.communicate()[0].decode()
            assert time.monotonic() < deadline, "the worker never reached epoch 3"
            time.sleep(0.2)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.npz").exists()
    latest = tf.train.latest_checkpoint(str(tmp_path / "killed"))
    assert latest is not None and latest.endswith("ckpt-2"), latest  # epochs 1 and 2 saved

    finish(worker(tmp_path / "killed", tmp_path / "resumed.npz"))

    history, arrays = load(tmp_path / "uninterrupted.npz")
    resumed_history, resumed_arrays = load(tmp_path / "resumed.npz")
    assert len(history["loss"]) == len(resumed_history["loss"]) == 4
    assert set(history) == set(resumed_history)
    assert all(history[key] == resumed_history[key] for key in history if key != "seconds")
    assert len(arrays) == len(resumed_arrays)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(arrays, resumed_arrays)) == 0.0


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupt


def resumable_fit(small_split, directory, callbacks=(), epochs=3):
    model = create_cnn(seed=3)
    orders = epoch_orders(len(small_split[0][0]), epochs, 1)
    # min_delta=1: no epoch after the first counts as an improvement, so ReduceLROnPlateau cuts
    # the rate after epochs 2 and 3 (a resumed one that forgot its best value would not cut it
    # after epoch 3) and EarlyStopping stops after epoch 3, restoring epoch 1's weights --
    # state that the checkpoint must carry across the interruption
    stateful = [
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0,
                                          min_delta=1.0),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, min_delta=1.0,
                                      restore_best_weights=True),
    ]
    history = train_resumable(train_fit, model, *small_split, directory=directory,
                              epochs=epochs, batch_size=64, seed=0, batch_orders=orders,
                              callbacks=[*stateful, *callbacks])
    return history, model, stateful


def state(model):
    return [v.numpy() for v in [*model.variables, *model.optimizer.variables]]


def test_fit_resumes_bit_for_bit_too(small_split, tmp_path):
    """fit with given batch orders, interrupted before epoch 3 and resumed in a new model; the
    learning rate that ReduceLROnPlateau cut comes back with the optimizer, and the callbacks'
    counters and best weights with the checkpoint. Keras older than
    `compat.KERAS_GATES["early_stopping_resume"]` does not restore the same weights after a
    resume (measured with 3.5): there train_resumable refuses EarlyStopping, by name."""
    if not compat.supports("early_stopping_resume"):
        with pytest.raises(NotImplementedError, match="resuming EarlyStopping with Keras"):
            resumable_fit(small_split, tmp_path / "whole")
        return
    history, model, (reduce_lr, early_stopping) = resumable_fit(small_split, tmp_path / "whole")
    with pytest.raises(Interrupt):
        resumable_fit(small_split, tmp_path / "parts", callbacks=[InterruptAt(2)])
    resumed_history, resumed, (resumed_reduce_lr, resumed_early_stopping) = resumable_fit(
        small_split, tmp_path / "parts", callbacks=[InterruptAt(99)])
    # logged before each epoch's cut: cut after epoch 2 and again after epoch 3
    assert history["learning_rate"][2] < history["learning_rate"][1]
    assert float(resumed.optimizer.learning_rate) < history["learning_rate"][2]
    assert early_stopping.stopped_epoch == resumed_early_stopping.stopped_epoch == 2
    assert resumed_reduce_lr.wait == reduce_lr.wait
    assert all(history[key] == resumed_history[key] for key in history if key != "seconds")
    for a, b in zip(state(model), state(resumed)):
        np.testing.assert_array_equal(a, b)

    # Finished: a rerun restores the end state and trains no more.
    again_history, again, _ = resumable_fit(small_split, tmp_path / "parts",
                                            callbacks=[InterruptAt(99)])
    assert again_history == resumed_history
    for a, b in zip(state(model), state(again)):
        np.testing.assert_array_equal(a, b)


def test_seed_generator_state_needs_naming(tmp_path, small_split):
    """tf.train.Checkpoint(model=...) alone does not save Dropout's seed state;
    TrainingCheckpoint does, with every other variable of the model and the optimizer."""
    model = create_cnn(seed=3)
    train_matched(model, *small_split, epochs=1, batch_size=64, seed=0)
    (state,) = seed_generator_states(model)
    model_only = tf.train.Checkpoint(model=model).save(str(tmp_path / "model_only" / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(model_only)}
    assert not any("seed_generator" in name for name in saved)

    settings = {"test": "1"}
    TrainingCheckpoint(tmp_path / "full", model, settings).save(1, {"loss": [1.0]})
    fresh = create_cnn(seed=7)  # other initial weights and seed state
    assert not np.array_equal(seed_generator_states(fresh)[0].numpy(), state.numpy())
    restored = TrainingCheckpoint(tmp_path / "full", fresh, settings).restore()
    assert restored == (1, {"loss": [1.0]}, False)
    for a, b in zip([*model.variables, *model.optimizer.variables],
                    [*fresh.variables, *fresh.optimizer.variables]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_checkpoint_from_other_settings_is_refused(small_split, tmp_path):
    model = create_cnn(seed=3)
    train_resumable(train_matched, model, *small_split, directory=tmp_path, epochs=1,
                    batch_size=64, seed=0)
    with pytest.raises(ValueError, match=r"other settings \(batch_size: checkpoint '64', "
                                         r"now '32'\)"):
        train_resumable(train_matched, create_cnn(seed=3), *small_split, directory=tmp_path,
                        epochs=1, batch_size=32, seed=0)


def test_settings_name_what_changes_the_run(small_split):
    model = create_cnn(seed=3)
    base = training_settings(train_matched, model, *small_split, epochs=2, batch_size=64,
                             seed=0)
    (x, y), val = small_split
    changed = {
        "method": training_settings(train_fit, model, *small_split, epochs=2, batch_size=64,
                                    seed=0, batch_orders=epoch_orders(len(x), 2, 0)),
        "train_data": training_settings(train_matched, model, (x[::-1], y[::-1]), val,
                                        epochs=2, batch_size=64, seed=0),
        "batch_orders": training_settings(train_matched, model, *small_split, epochs=2,
                                          batch_size=64, seed=0,
                                          batch_orders=epoch_orders(len(x), 2, 5)),
    }
    for key, settings in changed.items():
        assert settings[key] != base[key], key


def test_fit_without_batch_orders_is_refused(small_split, tmp_path):
    with pytest.raises(ValueError, match="pass batch_orders"):
        train_resumable(train_fit, create_cnn(seed=3), *small_split, directory=tmp_path,
                        epochs=1, batch_size=64, seed=0)
