"""Checkpoint every epoch and resume bit for bit, with TensorFlow's own checkpointing
(``tf.train.Checkpoint`` + ``tf.train.CheckpointManager``).

    history = train_resumable(train_matched, model, train_data, val_data, directory=...,
                              epochs=..., batch_size=..., seed=...)

trains with any of helpers.training's functions (fit or a tape loop), saves at the end of every
epoch, and -- run again after the process died, even by SIGKILL -- starts from the last saved
epoch and ends with the weights and History an uninterrupted run gives (tests/test_checkpoints.py).

What is saved, and why each piece is needed for a bit-for-bit resume:

- the model (``model=``: every layer's variables) and the optimizer (``optimizer=``: its
  iteration count, learning rate -- which ReduceLROnPlateau may have changed -- and slots);
- the Dropout ``SeedGenerator`` states, *named explicitly*: a ``SeedGenerator`` is a plain
  Python object, not a TensorFlow trackable (keras/src/random/seed_generator.py:
  ``SeedGenerator``), so
  ``tf.train.Checkpoint(model=model)`` does not reach its ``state`` variable, although it is in
  ``model.variables``. Without it the resumed run would drop other units than the
  uninterrupted one;
- the number of finished epochs: the next run passes it to the training function as
  ``initial_epoch``;
- the shuffle state: the batch orders are a pure function of (seed, epoch) (`epoch_orders`) or
  given explicitly; the seed and a digest of the orders are part of the settings, and epoch e
  trains on ``batch_orders[e]`` whatever epoch the run started at;
- the History so far (and each epoch's ``seconds``), so the resumed run returns the whole
  History;
- the settings the checkpoint was made with (`training_settings`): a run with other settings
  refuses the checkpoint with a ValueError naming each setting that differs.

- the state of the callbacks that keep one across epochs (`CALLBACK_STATE`: EarlyStopping's
  patience counter, best value and -- with ``restore_best_weights`` -- best weights,
  ReduceLROnPlateau's counters, ModelCheckpoint's best value). Keras does not save it (its own
  ``BackupAndRestore`` callback neither): without it a resumed ReduceLROnPlateau forgets its
  plateau and cuts the learning rate at other epochs (tests/test_checkpoints.py). It is put back
  after the callbacks' ``on_train_begin``, which resets it. Other callbacks are taken to keep no
  state from one epoch to the next (CSVLogger needs ``append=True`` to continue its file).

Not saved: the metrics' running state, because fit and the loops reset it at the start of every
epoch (keras/src/backend/tensorflow/trainer.py: ``TensorFlowTrainer.fit`` calls
``reset_metrics`` before each epoch), so at an epoch boundary it holds nothing the next epoch
reads.

Atomic: ``CheckpointManager.save`` writes the checkpoint's files first and only then points the
``checkpoint`` state file at them, replacing it with an atomic rename
(tensorflow/python/checkpoint/checkpoint_management.py: ``update_checkpoint_state_internal``
calls ``file_io.atomic_write_string_to_file``);
a process killed while saving leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from helpers.compat import require_keras
from helpers.training.fit import epoch_orders, require_compiled

SETTINGS_KEY = "settings/.ATTRIBUTES/VARIABLE_VALUE"  # where tf.train.Checkpoint stores it
# Callback attributes that carry over from one epoch to the next, by class.
CALLBACK_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    keras.callbacks.ModelCheckpoint: ("best",),
}


def _stateful(callback) -> tuple[str, ...]:
    return next((names for cls, names in CALLBACK_STATE.items() if isinstance(callback, cls)),
                ())


def _plain(value):
    """A callback attribute as JSON can hold it (NumPy scalars as Python numbers)."""
    return value if value is None or isinstance(value, (int, str)) else float(value)


def _digest(*arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def training_settings(train, model, train_data, val_data, *, epochs, batch_size, seed,
                      batch_orders=None, callbacks=()) -> dict[str, str]:
    """What must be the same for a checkpoint to be resumed: the training function, the model
    (name and variable shapes), the compiled optimizer (its configuration before training) and
    loss, the data, epochs, batch size, seed, the batch orders and the callbacks' classes."""
    if batch_orders is None and train.__name__ != "train_fit":
        batch_orders = epoch_orders(len(train_data[0]), epochs, seed)
    return {
        "method": train.__name__,
        "model": f"{model.name} {[tuple(v.shape) for v in model.variables]}",
        # without its name, which Keras numbers per process (adam, adam_1, ...)
        "optimizer": json.dumps({key: value for key, value in model.optimizer.get_config().items()
                                 if key != "name"}, sort_keys=True, default=str),
        "loss": str(model.loss),
        "train_data": _digest(*train_data),
        "val_data": _digest(*val_data),
        "epochs": str(epochs),
        "batch_size": str(batch_size),
        "seed": str(seed),
        "batch_orders": "fit's shuffle" if batch_orders is None else _digest(batch_orders),
        "callbacks": str([type(callback).__name__ for callback in callbacks]),
    }


def seed_generator_states(model: keras.Model) -> list:
    """The ``SeedGenerator`` state variables of the model's layers (Dropout's), which
    ``tf.train.Checkpoint(model=model)`` does not reach."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


class TrainingCheckpoint:
    """Everything a bit-for-bit resume needs, in one ``tf.train.Checkpoint`` per epoch, kept by a
    ``tf.train.CheckpointManager`` in `directory` (the last `max_to_keep`)."""

    def __init__(self, directory, model: keras.Model, settings: dict[str, str],
                 max_to_keep: int = 2, callbacks=()):
        require_compiled(model)
        if not model.optimizer.built:  # restoring needs the slots to exist
            model.optimizer.build(model.trainable_variables)
        self.settings, self.callbacks = settings, list(callbacks)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.history = tf.Variable("{}", dtype=tf.string, trainable=False, name="history")
        self.callback_state = tf.Variable("[]", dtype=tf.string, trainable=False)
        self.finished = tf.Variable(False, trainable=False)  # training ended (e.g. stopped early)
        self.restored_callback_state = None
        # EarlyStopping(restore_best_weights=True) holds a copy of the weights: one slot each
        self.best_weights = {
            index: [tf.Variable(tf.zeros_like(weight), trainable=False)
                    for weight in model.get_weights()]
            for index, callback in enumerate(self.callbacks)
            if getattr(callback, "restore_best_weights", False)
        }
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer,
            seed_generator_states=seed_generator_states(model),
            epoch=self.epoch, history=self.history, callback_state=self.callback_state,
            finished=self.finished,
            best_weights=[self.best_weights[index] for index in sorted(self.best_weights)],
            settings=tf.Variable(json.dumps(settings, sort_keys=True), trainable=False),
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep)

    def restore(self) -> tuple[int, dict, bool]:
        """Restore the latest checkpoint, if any; (finished epochs, History so far, whether
        training had ended). Refuses a checkpoint made with other settings, naming them."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0, {}, False
        saved = json.loads(tf.train.load_checkpoint(latest).get_tensor(SETTINGS_KEY))
        differing = sorted(key for key in {*saved, *self.settings}
                           if saved.get(key) != self.settings.get(key))
        if differing:
            details = "; ".join(f"{key}: checkpoint {saved.get(key)!r}, now "
                                f"{self.settings.get(key)!r}" for key in differing)
            raise ValueError(f"checkpoint {latest} was made with other settings ({details}); "
                             "use another directory or the same settings")
        self.checkpoint.restore(latest).assert_consumed()
        self.restored_callback_state = json.loads(self.callback_state.numpy().decode())
        return (int(self.epoch.numpy()), json.loads(self.history.numpy().decode()),
                bool(self.finished.numpy()))

    def restore_callbacks(self) -> None:
        """Put the restored callback state back (after their ``on_train_begin`` reset it)."""
        for index, state in enumerate(self.restored_callback_state or ()):
            callback = self.callbacks[index]
            for name, value in state.items():
                setattr(callback, name, value)
            if state.get("best_weights_saved"):
                callback.best_weights = [v.numpy() for v in self.best_weights[index]]

    def save(self, epoch: int, history: dict, finished: bool = False) -> str:
        self.epoch.assign(epoch)
        self.finished.assign(finished)
        self.history.assign(json.dumps(history))
        states = []
        for index, callback in enumerate(self.callbacks):
            state = {name: _plain(getattr(callback, name)) for name in _stateful(callback)}
            if index in self.best_weights and callback.best_weights is not None:
                for variable, weight in zip(self.best_weights[index], callback.best_weights):
                    variable.assign(weight)
                state["best_weights_saved"] = True
            states.append(state)
        self.callback_state.assign(json.dumps(states))
        return self.manager.save(checkpoint_number=epoch)


class SaveEveryEpoch(keras.callbacks.Callback):
    """Appends each epoch's logs and wall time to the History so far and saves a
    `TrainingCheckpoint` at the end of every epoch."""

    def __init__(self, checkpoint: TrainingCheckpoint, history: dict, epochs_done: int = 0):
        super().__init__()
        self.checkpoint, self.history, self.epochs_done = checkpoint, history, epochs_done

    def on_train_begin(self, logs=None):
        self.checkpoint.restore_callbacks()  # the callbacks before this one have reset theirs

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        for key, value in {**logs, "seconds": seconds}.items():
            self.history.setdefault(key, []).append(float(value))
        self.epochs_done = epoch + 1
        self.checkpoint.save(self.epochs_done, self.history)

    def on_train_end(self, logs=None):
        # Once more, marked finished: the callbacks before this one may have changed the model
        # after the last epoch (EarlyStopping restores the best weights here).
        self.checkpoint.save(self.epochs_done, self.history, finished=True)


def train_resumable(train, model, train_data, val_data, *, directory, epochs, batch_size, seed,
                    batch_orders=None, callbacks=None, verbose=0, max_to_keep=2) -> dict:
    """``train(model, ...)`` (fit or a tape loop from helpers.training), saving a checkpoint in
    `directory` after every epoch; if `directory` already holds one made with the same settings,
    it is restored first and training continues from the epoch after it. Returns the whole
    History (the restored epochs' and this run's), as ``train`` would have returned it
    uninterrupted. The callbacks' `SaveEveryEpoch` runs after `callbacks`, so it saves what they
    changed (e.g. ReduceLROnPlateau's learning rate)."""
    if train.__name__ == "train_fit" and batch_orders is None:
        raise ValueError("train_fit without batch_orders shuffles from TensorFlow's global "
                         "random state, which a checkpoint does not hold: pass batch_orders "
                         "(e.g. helpers.training.epoch_orders) to resume fit bit for bit")
    callbacks = list(callbacks or ())
    if any(isinstance(c, keras.callbacks.EarlyStopping) for c in callbacks):
        require_keras("early_stopping_resume")
    settings = training_settings(train, model, train_data, val_data, epochs=epochs,
                                 batch_size=batch_size, seed=seed, batch_orders=batch_orders,
                                 callbacks=callbacks)
    checkpoint = TrainingCheckpoint(Path(directory), model, settings, max_to_keep, callbacks)
    initial_epoch, history, finished = checkpoint.restore()
    if not finished:
        saver = SaveEveryEpoch(checkpoint, history, initial_epoch)
        orders = {} if batch_orders is None else {"batch_orders": batch_orders}
        train(model, train_data, val_data, epochs=epochs, batch_size=batch_size, seed=seed,
              verbose=verbose, callbacks=[*callbacks, saver],
              initial_epoch=initial_epoch, **orders)
    return history
