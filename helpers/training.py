"""Interchangeable ways to train a compiled Keras classifier: fit, the article's tape loop, a
tape loop that is fit, and every loop in between.

Every training function has the same signature, so cross-validation, notebooks and tests can swap
them::

    history = train(model, (x_train, y_train), (x_val, y_val),
                    epochs=..., batch_size=..., seed=..., verbose=0)

and returns a History-like dict of per-epoch lists under fit's keys -- ``loss``, ``accuracy``,
``val_loss``, ``val_accuracy`` -- plus ``seconds`` (wall time of each epoch, validation included).
The model must be compiled: the optimizer and loss given to `compile` are the ones used.

- `train_fit`: ``model.fit``.
- `train_tape_loop`: a GradientTape loop with each of `DIFFERENCES` -- the four ways the article's
  loop trains differently from fit -- switchable (``fixes=``).
- `train_naive`: the article's loop, none fixed (no shuffling, ``training`` left unset so Dropout
  is off, the per-sample loss vector differentiated -- i.e. summed -- and the last partial batch
  dropped).
- `train_matched`: all fixed, a loop that does what fit does; given the same batch order it
  reproduces fit's History and weights: bit for bit for the article's CNN on this CPU with the
  pinned TensorFlow/Keras (notebook 03, tests). Where TensorFlow's graph "arithmetic optimizer"
  regroups a sum differently in the two graphs (seen with BatchNormalization + an L2
  regularizer) the match is to ~1e-6, and bit for bit again with
  ``tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})``
  (tests/test_training.py).
- ``METHODS`` names them all for `helpers.cv.cross_validate`, including the ablation's 8
  variants (`ablation_variants`): the article's loop with one fix (``naive+<key>``) and the
  matched loop without one (``matched-<key>``).

Where each behaviour of fit lives, Keras 3.15.1 source, TensorFlow backend:
- ``training=True``, loss, gradient, update, metrics: keras/src/backend/tensorflow/trainer.py:53-88
  (``train_step``); inference-mode validation: same file, ``test_step`` at :90.
- the loss is the compiled loss (reduction ``sum_over_batch_size``) plus the sum of each of
  ``model.losses``, added with ``ops.sum``: keras/src/trainers/trainer.py:385-401.
- shuffling: one ``tf.random.shuffle`` of all indices per iterator,
  keras/src/trainers/data_adapters/array_data_adapter.py:128-134; the last partial batch is kept.
- iterators: a new one at each epoch's start, and one more made and thrown away at each epoch's
  end, keras/src/trainers/epoch_iterator.py:105-126.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


class Difference(NamedTuple):
    """One way the article's loop trains differently from fit."""

    key: str  # the switch's name in `train_tape_loop(fixes=...)`
    name: str  # a short label for tables and figures
    fit: str  # what fit does
    article: str  # what the article's loop does instead


# The canonical list: the README and notebooks 02-05 read their count and names from it.
DIFFERENCES = (
    Difference("dropout", "Dropout active in training",
               "calls the model with training=True, so Dropout drops half the units of each "
               "training batch",
               "calls model(x) with training unset, so Dropout never drops anything"),
    Difference("mean_loss", "mean loss",
               "differentiates the batch-mean loss (plus model.losses)",
               "differentiates the per-sample loss vector, i.e. the sum over the batch: a "
               "batch_size-times larger gradient"),
    Difference("shuffle", "a new shuffle every epoch",
               "shuffles the training samples (the matched loop draws a new permutation every "
               "epoch)",
               "takes the batches in file order, the same every epoch"),
    Difference("partial_batch", "last partial batch kept",
               "trains on every sample every epoch, the last partial batch included",
               "drops the last len(x) % batch_size samples every epoch"),
)
DIFFERENCE_KEYS = tuple(difference.key for difference in DIFFERENCES)


def epoch_orders(num_samples: int, epochs: int, seed: int) -> np.ndarray:
    """A fresh, reproducible permutation of the samples for every epoch: shape (epochs, N)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(num_samples) for _ in range(epochs)])


def _check_orders(batch_orders, num_samples: int, epochs: int) -> np.ndarray:
    batch_orders = np.asarray(batch_orders)
    if batch_orders.shape != (epochs, num_samples):
        raise ValueError(
            f"batch_orders has shape {batch_orders.shape}; expected (epochs, samples) = "
            f"({epochs}, {num_samples})"
        )
    return batch_orders


def _accuracy_metric(y, model: keras.Model, name: str = "accuracy") -> keras.metrics.Metric:
    """The metric compile(metrics=["accuracy"]) picks for these labels and outputs."""
    if model.output_shape[-1] == 1:
        return keras.metrics.BinaryAccuracy(name=name)
    if np.ndim(y) >= 2 and np.shape(y)[-1] > 1:
        return keras.metrics.CategoricalAccuracy(name=name)
    return keras.metrics.SparseCategoricalAccuracy(name=name)


class _ReducedLoss(keras.losses.Loss):
    """A per-sample loss function with Keras' default batch reduction (``sum_over_batch_size``),
    as compile() wraps a loss given by name or function."""

    def __init__(self, per_sample_fn):
        super().__init__(name=getattr(per_sample_fn, "__name__", "loss"))
        self.per_sample_fn = per_sample_fn

    def call(self, y_true, y_pred):
        return self.per_sample_fn(y_true, y_pred)


def _batch_loss(model: keras.Model) -> keras.losses.Loss:
    loss = model.loss
    if isinstance(loss, keras.losses.Loss):
        return loss
    return _ReducedLoss(keras.losses.get(loss))


def _require_compiled(model: keras.Model) -> None:
    if getattr(model, "optimizer", None) is None or model.loss is None:
        raise ValueError(
            f"model {model.name!r} is not compiled: call model.compile(optimizer=..., loss=..., "
            "metrics=['accuracy']) first; the training functions use its optimizer and loss"
        )


def _progbar(steps: int, verbose: int, logs) -> keras.utils.Progbar:
    return keras.utils.Progbar(steps, verbose=verbose, stateful_metrics=list(logs))


class _Evaluator:
    """Validation as fit runs it: ``training=False``, batches of `batch_size` with the partial
    batch kept, loss = compiled loss + model.losses, sample-weighted running means."""

    def __init__(self, model, loss_fn, x_val, y_val, batch_size, compiled):
        self.model, self.loss_fn, self.batch_size = model, loss_fn, batch_size
        self.x_val = tf.convert_to_tensor(x_val)
        self.y_val = tf.convert_to_tensor(y_val)
        self.loss_tracker = keras.metrics.Mean(name="val_loss")
        self.accuracy = _accuracy_metric(y_val, model, name="val_accuracy")
        self.metrics = (self.loss_tracker, self.accuracy)
        # Batch dimension None: the partial last batch reuses the one trace.
        signature = [tf.TensorSpec([None, *self.x_val.shape[1:]], self.x_val.dtype),
                     tf.TensorSpec([None, *self.y_val.shape[1:]], self.y_val.dtype)]
        self.step = (tf.function(self._step, input_signature=signature) if compiled
                     else self._step)

    def _step(self, x, y):
        y_pred = self.model(x, training=False)
        loss = total_loss(self.model, self.loss_fn, y, y_pred)
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        self.accuracy.update_state(y, y_pred)

    def __call__(self) -> dict[str, float]:
        """One validation pass; fit's ``val_*`` logs."""
        for metric in self.metrics:
            metric.reset_state()
        for start in range(0, int(self.x_val.shape[0]), self.batch_size):
            stop = start + self.batch_size
            self.step(self.x_val[start:stop], self.y_val[start:stop])
        return {metric.name: float(metric.result()) for metric in self.metrics}


def total_loss(model: keras.Model, loss_fn, y, y_pred):
    """fit's loss: batch-mean loss plus each of model.losses, summed in fit's order
    (keras/src/trainers/trainer.py:385-401)."""
    losses = [loss_fn(y, y_pred)] + [ops.sum(extra) for extra in model.losses]
    return losses[0] if len(losses) == 1 else ops.sum(losses)


class EpochTimer(keras.callbacks.Callback):
    """Records each epoch's wall time (fit's epoch, validation included) in ``seconds``."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.seconds = []


def ordered_dataset(x, y, batch_size: int, batch_orders) -> tf.data.Dataset:
    """All epochs' batches in the given order, one epoch after another, each epoch ending with its
    partial batch. Fed to fit with ``steps_per_epoch``, fit keeps one iterator across epochs
    (epoch_iterator.py:110), so epoch e sees exactly ``batch_orders[e]``."""
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    per_epoch = [
        tf.data.Dataset.from_tensor_slices(order).batch(batch_size) for order in batch_orders
    ]
    indices = per_epoch[0]
    for epoch_indices in per_epoch[1:]:
        indices = indices.concatenate(epoch_indices)
    return indices.map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)))


def train_fit(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
              batch_orders=None):
    """``model.fit`` as the article calls it (NumPy arrays, ``shuffle=True``).

    With `batch_orders` (shape (epochs, N), e.g. from `epoch_orders`), fit instead trains on
    exactly those orders; that is how notebook 03 and the tests give fit and a tape loop the same
    batches. `seed` is not used here: fit's shuffling follows the global seed, which `create_cnn`
    sets.
    """
    _require_compiled(model)
    x, y = train_data
    timer = EpochTimer()
    if batch_orders is None:
        inputs = dict(x=x, y=y, batch_size=batch_size, shuffle=True)
    else:
        batch_orders = _check_orders(batch_orders, len(x), epochs)
        inputs = dict(
            x=ordered_dataset(x, y, batch_size, batch_orders),
            steps_per_epoch=math.ceil(len(x) / batch_size),
            shuffle=False,  # the order is in the dataset
        )
    history = model.fit(
        **inputs, epochs=epochs, validation_data=val_data, validation_batch_size=batch_size,
        verbose=verbose, callbacks=[timer],
    )
    return {**{key: [float(v) for v in history.history[key]] for key in HISTORY_KEYS},
            "seconds": timer.seconds}


class TrainStep(NamedTuple):
    """A training step ``step(x_batch, y_batch)`` and the History metrics it updates, named by
    their History keys (``loss`` first)."""

    step: Callable
    metrics: tuple[keras.metrics.Metric, ...]

    def reset_metrics(self) -> None:
        for metric in self.metrics:
            metric.reset_state()

    def logs(self) -> dict[str, float]:
        """fit's training logs: each metric's running value."""
        return {metric.name: float(metric.result()) for metric in self.metrics}


def _built_optimizer(model: keras.Model):
    """The compiled optimizer with its variables created, as fit creates them before its first
    step; created inside the first call of a tf.function instead, they make it trace twice."""
    _require_compiled(model)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model.optimizer


def tape_train_step(model: keras.Model, y, *, dropout: bool, mean_loss: bool) -> TrainStep:
    """One GradientTape training step with two of the `DIFFERENCES` switchable.

    - `dropout`: ``model(x, training=True)`` as fit calls it (trainer.py:60), else ``model(x)``
      with ``training`` unset, as the article does, so Dropout is off;
    - `mean_loss`: differentiate fit's loss, the batch mean plus each of ``model.losses``
      (trainer.py:385-401), else the article's per-sample loss vector, whose gradient is that of
      its *sum* over the batch.

    The History metrics are updated from the same forward pass, before the update, as fit does.
    """
    optimizer = _built_optimizer(model)
    loss_tracker = keras.metrics.Mean(name="loss")
    accuracy = _accuracy_metric(y, model)
    if mean_loss:
        batch_loss = _batch_loss(model)
    else:
        per_sample_loss = keras.losses.get(model.loss)
        if isinstance(per_sample_loss, keras.losses.Loss):
            per_sample_loss = per_sample_loss.call  # the unreduced per-sample values

    def train_step(x_batch, y_batch):
        with tf.GradientTape() as tape:
            y_pred = model(x_batch, training=True) if dropout else model(x_batch)
            if mean_loss:
                loss = total_loss(model, batch_loss, y_batch, y_pred)
            else:
                loss = per_sample_loss(y_batch, y_pred)
        if mean_loss:
            loss_tracker.update_state(loss, sample_weight=tf.shape(x_batch)[0])
        else:
            loss_tracker.update_state(loss)  # the per-sample values: the same running mean
        accuracy.update_state(y_batch, y_pred)
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))

    return TrainStep(train_step, (loss_tracker, accuracy))


def naive_train_step(model: keras.Model, y) -> TrainStep:
    """The article's step: ``training`` unset, the per-sample loss vector differentiated."""
    return tape_train_step(model, y, dropout=False, mean_loss=False)


def matched_train_step(model: keras.Model, y) -> TrainStep:
    """fit's step (trainer.py:53-88): ``training=True``, batch-mean loss + model.losses, metrics
    from the same forward pass, before the update."""
    return tape_train_step(model, y, dropout=True, mean_loss=True)


def indexed_train_step(batch_step, x_all, y_all, batch_size: int, steps_per_execution: int = 1):
    """A step that takes sample *indices* and gathers its batch from the tensors `x_all`, `y_all`
    -- so every batch, the partial one too, is an int64 vector of unknown length and one
    ``tf.function`` trace serves them all. With `steps_per_execution` > 1 it takes the indices
    of that many consecutive batches and trains them one after another in a loop (a graph
    ``while`` loop under tf.function)."""
    if steps_per_execution == 1:
        def train_step(indices):
            batch_step(tf.gather(x_all, indices), tf.gather(y_all, indices))
    else:
        def train_step(indices):
            for start in tf.range(0, tf.size(indices, out_type=tf.int64), batch_size):
                batch = indices[start:start + batch_size]
                batch_step(tf.gather(x_all, batch), tf.gather(y_all, batch))
    return train_step


def _run_epochs(train_step, batches, steps, epochs, step_metrics: TrainStep, evaluate, verbose,
                steps_per_call=1):
    """fit's epoch loop: reset the metrics, run ``train_step(*batch)`` for every batch (or group
    of `steps_per_call` batches) that ``batches(epoch)`` yields, validate, record History; with a
    fit-like progress bar. History's keys are the logs' (``step_metrics.logs()`` then
    ``evaluate()``), plus ``seconds``."""
    history = {}
    for epoch in range(epochs):
        start_time = time.perf_counter()
        step_metrics.reset_metrics()
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}")
        progbar = None
        for call, batch in enumerate(batches(epoch)):
            train_step(*batch)
            if verbose == 1:
                logs = step_metrics.logs()
                progbar = progbar or _progbar(steps, verbose, logs)
                progbar.update(min((call + 1) * steps_per_call, steps), list(logs.items()),
                               finalize=False)  # as fit does (progbar_logger.py:98): one final line
        logs = {**step_metrics.logs(), **evaluate()}
        for key, value in {**logs, "seconds": time.perf_counter() - start_time}.items():
            history.setdefault(key, []).append(value)
        if verbose:
            progbar = progbar or _progbar(steps, verbose, logs)
            progbar.update(steps, list(logs.items()), finalize=True)
    return history


def train_tape_loop(model, train_data, val_data, *, epochs, batch_size, seed, fixes,
                    verbose=0, batch_orders=None, compiled=True, steps_per_execution=1):
    """The article's GradientTape loop with the `DIFFERENCES` named in `fixes` done as fit does
    them: no fixes is `train_naive`, all of them `train_matched`, and anything between is one
    of the ablation's variants (notebook 05).

    - ``"dropout"``, ``"mean_loss"``: the step's switches (`tape_train_step`);
    - ``"shuffle"``: a new permutation of all samples every epoch (from `seed`, or exactly
      `batch_orders`, shape (epochs, N)); without it, file order every epoch;
    - ``"partial_batch"``: ``ceil(N / batch_size)`` steps, the last partial batch kept; without it
      ``N // batch_size`` steps, and the last ``N % batch_size`` samples of the epoch's order are
      not trained on.

    What every variant shares with fit: History-style metrics (running per-sample means, reset
    each epoch) and validation in inference mode after every epoch. One ``tf.function`` step,
    traced once: the batch is gathered inside it from index tensors of unknown length, so the last
    partial batch does not retrace. `compiled=False` runs the same step eagerly.

    `steps_per_execution` > 1 is fit's option of the same name (``compile(steps_per_execution=
    ...)``): each call of the compiled function trains that many batches in a graph loop, so
    Python and the function call are paid once per group instead of once per batch (notebook 06
    measures what that saves). The batches, their order and the arithmetic are the same, and so
    are History and weights (tests/test_training.py); the progress bar moves once per group.
    """
    unknown = set(fixes) - set(DIFFERENCE_KEYS)
    if unknown:
        raise ValueError(f"unknown fixes {sorted(unknown)}; known: {list(DIFFERENCE_KEYS)}")
    if steps_per_execution < 1:
        raise ValueError(f"steps_per_execution={steps_per_execution}; it must be >= 1")
    x, y = train_data
    num_samples = len(x)
    if "shuffle" in fixes:
        batch_orders = (epoch_orders(num_samples, epochs, seed) if batch_orders is None
                        else _check_orders(batch_orders, num_samples, epochs))
    elif batch_orders is not None:
        raise ValueError("batch_orders needs the 'shuffle' fix: without it every epoch takes the "
                         "samples in file order")
    else:
        batch_orders = np.tile(np.arange(num_samples), (epochs, 1))
    if "partial_batch" in fixes:
        steps, trained_per_epoch = math.ceil(num_samples / batch_size), num_samples
    else:
        steps = num_samples // batch_size
        trained_per_epoch = steps * batch_size
    x_all, y_all = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    step = tape_train_step(model, y, dropout="dropout" in fixes, mean_loss="mean_loss" in fixes)
    evaluate = _Evaluator(model, _batch_loss(model), *val_data, batch_size, compiled)

    train_step = indexed_train_step(step.step, x_all, y_all, batch_size, steps_per_execution)
    if compiled:
        train_step = tf.function(
            train_step, input_signature=[tf.TensorSpec([None], tf.int64)]
        )
    indices_per_call = steps_per_execution * batch_size

    def batches(epoch):  # this epoch's order, partial batch (if kept) last
        order = tf.constant(batch_orders[epoch][:trained_per_epoch], dtype=tf.int64)
        for start in range(0, trained_per_epoch, indices_per_call):
            yield (order[start:start + indices_per_call],)

    history = _run_epochs(train_step, batches, steps, epochs, step, evaluate, verbose,
                          steps_per_execution)
    train_tape_loop.last_step = train_step  # lets tests and notebook 06 inspect tracing
    return history


def train_naive(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
                compiled=True, steps_per_execution=1):
    """The article's loop, ported to Keras 3 (the calls are the same; only imports changed):
    `train_tape_loop` with none of the fixes.

    Its semantics are kept: batches taken in file order with no shuffling, ``model(x)`` with
    ``training`` unset (Dropout off), ``tape.gradient`` of the per-sample loss vector (which
    differentiates the *sum* over the batch), and ``len(x) // batch_size`` steps (the partial batch
    is dropped). `compiled=False` runs it eagerly as published; `compiled=True` wraps the same step
    in ``tf.function`` (float-close, several times faster). `seed` is unused: nothing is shuffled.
    Reported training loss/accuracy are running per-sample means over the epoch, like fit's, so the
    curves compare like with like; validation is the same inference pass as for the other loops.
    """
    return train_tape_loop(model, train_data, val_data, epochs=epochs, batch_size=batch_size,
                           seed=seed, fixes=(), verbose=verbose, compiled=compiled,
                           steps_per_execution=steps_per_execution)


def train_matched(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
                  batch_orders=None, compiled=True, steps_per_execution=1):
    """A GradientTape loop that does what fit does (see the module docstring for where):
    `train_tape_loop` with every one of the `DIFFERENCES` fixed.

    - a new permutation of all samples every epoch (from `seed`, or exactly `batch_orders`);
    - ``model(x, training=True)`` so Dropout and BatchNormalization train;
    - loss = batch-mean loss + sum of model.losses, and its gradient (not the per-sample sum);
    - every sample every epoch: ``ceil(N / batch_size)`` steps, partial batch kept;
    - History-style metrics: running per-sample means, computed before each update, reset each
      epoch; validation in inference mode;
    - one ``tf.function`` step, traced once, also for the partial batch.

    `steps_per_execution`: see `train_tape_loop`.
    """
    history = train_tape_loop(
        model, train_data, val_data, epochs=epochs, batch_size=batch_size, seed=seed,
        fixes=DIFFERENCE_KEYS, verbose=verbose, batch_orders=batch_orders, compiled=compiled,
        steps_per_execution=steps_per_execution)
    train_matched.last_step = train_tape_loop.last_step
    return history


def _variant(fixes: tuple[str, ...], label: str):
    def train(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
              steps_per_execution=1):
        return train_tape_loop(model, train_data, val_data, epochs=epochs, batch_size=batch_size,
                               seed=seed, fixes=fixes, verbose=verbose,
                               steps_per_execution=steps_per_execution)

    train.__name__ = train.__qualname__ = f"train_{label}"
    train.__doc__ = f"`train_tape_loop` with fixes={fixes}."
    return train


def ablation_variants() -> dict[str, tuple[str, ...]]:
    """The ablation's 8 variants, name -> fixes: the article's loop with one of fit's behaviours
    added (``naive+<key>``), and the matched loop with one removed (``matched-<key>``)."""
    added = {f"naive+{key}": (key,) for key in DIFFERENCE_KEYS}
    removed = {f"matched-{key}": tuple(k for k in DIFFERENCE_KEYS if k != key)
               for key in DIFFERENCE_KEYS}
    return {**added, **removed}


ABLATION_METHODS = tuple(ablation_variants())

METHODS = {
    "fit": train_fit, "naive": train_naive, "matched": train_matched,
    **{name: _variant(fixes, name) for name, fixes in ablation_variants().items()},
}
