"""`check_loop`: which samples each step of your whole training loop sees, epoch by epoch,
against what fit does.

How it sees: the model's class is swapped, for the run, for a subclass whose ``__call__`` calls
the model as usual, then records the call's input batch, ``training`` argument and output (in a
``tf.function`` through a ``tf.numpy_function`` on which the output then waits, so the record is
made each time the graph runs, not only when it is traced). Each recorded row is mapped back to
its sample by the bytes of the row: a batch of rows of `x` is a training step, a batch of rows
of the validation data a validation call. Epochs are the training steps split into `epochs`
equal runs (your loop must make the same number of steps every epoch, and call the model once per
step on training data: a loop that also calls the model on training rows for its metrics, e.g.
``model(x_train)`` once an epoch, is read as taking extra steps).

The record also keeps each call's predictions and ``model.losses`` at that call, so that when
your loop returns what it reports (a History-like dict of per-epoch values, or fit's
``History``), its ``"loss"`` and ``"accuracy"`` can be checked against the running mean over the
epoch's batches that fit reports: the compiled loss of each step's predictions plus
``model.losses``, weighted by the batch size as fit's loss tracker weights it
(keras/src/backend/tensorflow/trainer.py: ``TensorFlowTrainer.train_step``,
``_loss_tracker.update_state(..., sample_weight=batch_size)``).
"""

from __future__ import annotations

import helpers.notebook.quiet_tensorflow  # noqa: F401  first: TensorFlow without start-up lines

# isort: split
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from helpers.doctor import DoctorError
from helpers.doctor.step import _new_model


class LoopCheck(NamedTuple):
    key: str
    fit: str  # what fit does
    yours: str  # what a loop flagged with this key does instead


LOOP_CHECKS = {
    check.key: check for check in (
        LoopCheck("shuffle", "draws a new order of the samples every epoch (under "
                  "keras.utils.set_random_seed it repeats one shuffled order: notebook 03)",
                  "your loop does not draw a new order every epoch"),
        LoopCheck("partial_batch", "trains on every sample every epoch, the last partial "
                  "batch included", "your loop leaves out the last len(x) % batch_size "
                  "samples' worth of steps every epoch"),
        LoopCheck("replacement", "sees every sample exactly once an epoch",
                  "your loop draws samples with replacement: some twice, some never in an "
                  "epoch"),
        LoopCheck("validation_training", "validates in inference mode (training=False)",
                  "your loop calls the model with training=True on validation data"),
        LoopCheck("running_mean_metrics", "reports each epoch's loss and accuracy as the running "
                  "mean over the epoch's batches (History)",
                  "your loop reports other values than the epoch's running means (e.g. the last "
                  "batch's)"),
    )
}


# The History keys checked against the epoch's running mean, and how close "equal" is: fit's
# tracker adds float32 batch means in its own order, the doctor recomputes them in float64.
CHECKED_METRICS = ("loss", "accuracy")
METRIC_TOLERANCE = 1e-4  # relative


class _Call(NamedTuple):
    kind: str  # "train", "validation" or "other"
    indices: np.ndarray  # the samples of the batch (-1: a row found in neither array)
    training: object  # the call's training argument: True, False or None
    predictions: np.ndarray | None  # the model's output (None: not a single tensor)
    regularization: float  # sum(model.losses) at the call


class _Recorder:
    def __init__(self, x, validation_x):
        self.dtype = x.dtype
        self.row_bytes = x[0].nbytes
        self.train = {row.tobytes(): i for i, row in reversed(list(enumerate(x)))}
        self.validation = ({} if validation_x is None else
                           {row.tobytes(): i
                            for i, row in reversed(list(enumerate(validation_x)))})
        self.calls: list[_Call] = []

    def record(self, batch, training, predictions=None, regularization=0.0) -> None:
        batch = np.ascontiguousarray(np.asarray(batch).astype(self.dtype, copy=False))
        if batch.ndim == 0 or batch[0].nbytes != self.row_bytes:
            return
        keys = [row.tobytes() for row in batch]
        if all(k in self.train for k in keys):
            kind, table = "train", self.train
        elif self.validation and all(k in self.validation for k in keys):
            kind, table = "validation", self.validation
        else:
            kind, table = "other", self.train
        self.calls.append(_Call(kind, np.array([table.get(k, -1) for k in keys]), training,
                                None if predictions is None else np.asarray(predictions),
                                float(regularization)))


def _instrument(model: keras.Model, recorder: _Recorder):
    """Swap `model`'s class for one that records its calls; returns the original class."""
    original = type(model)

    def __call__(self, *args, **kwargs):
        outputs = original.__call__(self, *args, **kwargs)
        if self is not model or not args:
            return outputs
        inputs = args[0]
        training = kwargs.get("training", args[1] if len(args) > 1 else None)
        single = isinstance(outputs, tf.Tensor)
        regularization = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
        if not tf.inside_function():
            if isinstance(inputs, (np.ndarray, tf.Tensor)):
                recorder.record(inputs, training, outputs if single else None, regularization)
            return outputs
        if not isinstance(inputs, tf.Tensor):
            return outputs

        def record(batch, predictions, penalty, training=training, single=single):
            recorder.record(batch, training, predictions if single else None, penalty)
            return np.int64(0)
        # Recorded each time the graph runs: the identity below waits for it
        done = tf.numpy_function(record, [inputs, outputs if single else tf.constant(0.0),
                                          regularization], tf.int64, stateful=True)
        if not single:
            return outputs
        with tf.control_dependencies([done]):
            return tf.identity(outputs)

    model.__class__ = type(original.__name__, (original,), {"__call__": __call__})
    return original


@dataclass(frozen=True)
class LoopReport:
    """What `check_loop` found, epoch by epoch. `differences`: keys of `LOOP_CHECKS` where your
    loop does otherwise than fit; `orders`: the sample indices each epoch trained on, in order;
    `batch_sizes`: each epoch's batch sizes; `new_orders`: epochs (after the first) whose order
    differs from the previous epoch's; `file_order`: epochs that take the samples in file
    order; `repeated`: samples seen more than once, per epoch; `unseen`: samples never seen, per
    epoch; `training_modes`: the ``training`` argument of the training steps' calls, counted;
    `validation_modes`: the same for validation calls (empty when the loop does not validate);
    `metrics`: for each of `CHECKED_METRICS` your loop returned, per epoch, (what your loop
    reported, the running mean over the epoch's batches as fit reports it, the last batch's
    value); empty when your loop returns no History-like dict."""

    num_samples: int
    batch_size: int
    differences: tuple[str, ...]
    orders: tuple = ()
    batch_sizes: tuple = ()
    new_orders: int = 0
    file_order: int = 0
    repeated: tuple = ()
    unseen: tuple = ()
    training_modes: dict = field(default_factory=dict)
    validation_modes: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def matches_fit(self) -> bool:
        return not self.differences

    def __str__(self) -> str:
        epochs = len(self.orders)
        steps = len(self.batch_sizes[0]) if self.batch_sizes else 0
        verdict = "does what fit does" if self.matches_fit else "DIFFERS from fit"
        partial = self.num_samples % self.batch_size
        lines = [f"Your loop, {epochs} epoch(s) of {steps} steps on {self.num_samples} samples, "
                 f"batch size {self.batch_size}: {verdict}."]

        def line(key, detail):
            mark = "[x]" if key in self.differences else "[ok]"
            lines.append(f"  {mark} {key}: {detail}")

        if self.file_order == epochs:
            order = f"file order in all {epochs} epochs"
        elif self.new_orders == epochs - 1:
            order = (f"shuffled, a new order in every later epoch ({epochs - 1} of {epochs - 1})"
                     if epochs > 1 else "shuffled (one epoch: a new order cannot be seen)")
        else:
            order = (f"a new order in {self.new_orders} of {epochs - 1} later epochs "
                     f"({self.file_order} in file order)")
        line("shuffle", order)
        if partial == 0:
            lines.append(f"  [-] partial_batch: {self.batch_size} divides {self.num_samples}, "
                         "no partial batch")
        else:
            last = [sizes[-1] for sizes in self.batch_sizes]
            kept = sum(size == partial for size in last)
            line("partial_batch", f"a last batch of {partial} in {kept} of {epochs} epochs; "
                 f"the steps of an epoch take {min(map(sum, self.batch_sizes))} samples (fewest; "
                 f"fit: all {self.num_samples})")
        line("replacement", f"samples seen twice or more an epoch: {max(self.repeated)} at "
             f"most; never seen: {max(self.unseen)} at most (fit: 0 and 0)")
        lines.append("  [i] training steps call the model with training="
                     + ", ".join(f"{mode} ({count}x)" for mode, count in
                                 self.training_modes.items())
                     + " (check_step checks the step itself)")
        if self.validation_modes:
            line("validation_training", "validation calls the model with training="
                 + ", ".join(f"{mode} ({count}x)" for mode, count in
                             self.validation_modes.items()))
        else:
            lines.append("  [-] validation_training: no validation calls seen")
        if self.metrics:
            found = []
            for name, epochs_seen in self.metrics.items():
                kinds = [_kind(*values) for values in epochs_seen]
                counts = ", ".join(f"{kind} in {kinds.count(kind)}" for kind in
                                   ("the running mean", "the last batch's", "another value")
                                   if kind in kinds)
                reported, running, last = epochs_seen[-1]
                found.append(f"{name}: {counts} of {len(kinds)} epochs (last epoch: reported "
                             f"{reported:.4g}, running mean {running:.4g}, last batch "
                             f"{last:.4g})")
            line("running_mean_metrics", "; ".join(found))
        else:
            lines.append("  [-] running_mean_metrics: your loop returned no History-like dict "
                         "of per-epoch values (return {'loss': [...]} to have them checked)")
        return "\n".join(lines)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= METRIC_TOLERANCE * max(1.0, abs(b))


def _kind(reported: float, running: float, last: float) -> str:
    if _close(reported, running):
        return "the running mean"
    return "the last batch's" if _close(reported, last) else "another value"


def _history(returned) -> dict | None:
    """What `train` returned, as a dict of per-epoch values: fit's ``History`` or a dict."""
    if isinstance(returned, keras.callbacks.History):
        return returned.history
    return returned if isinstance(returned, dict) else None


def _batch_metrics(model, y, call) -> dict[str, float]:
    """The loss (compiled loss of the call's predictions + model.losses) and accuracy of one
    training step's batch, as fit's trackers see them."""
    if call.predictions is None or not (isinstance(model.loss, str) or callable(model.loss)):
        return {}
    y_true, y_pred = y[call.indices], call.predictions.astype(np.float32)
    loss = np.mean(keras.ops.convert_to_numpy(keras.losses.get(model.loss)(y_true, y_pred)))
    found = {"loss": float(loss) + call.regularization}
    if y_pred.ndim == 2 and y_pred.shape[-1] > 1:
        labels = y_true.argmax(-1) if y_true.ndim == 2 else y_true.reshape(-1)
        found["accuracy"] = float(np.mean(y_pred.argmax(-1) == labels))
    return found


def _metrics(model, y, epoch_steps, history, epochs) -> dict:
    """Per checked key your loop returned: (reported, running mean, last batch) per epoch."""
    if history is None:
        return {}
    per_step = [[_batch_metrics(model, y, call) for call in steps] for steps in epoch_steps]
    found = {}
    for name in CHECKED_METRICS:
        if name not in history or not all(name in m for e in per_step for m in e):
            continue
        reported = [float(value) for value in history[name]]
        if len(reported) != epochs:
            raise DoctorError(f"your loop returned {len(reported)} values of {name!r} for "
                              f"{epochs} epochs")
        rows = []
        for value, steps, step_metrics in zip(reported, epoch_steps, per_step):
            sizes = np.array([len(call.indices) for call in steps], dtype=np.float64)
            values = np.array([m[name] for m in step_metrics])
            rows.append((value, float(sizes @ values / sizes.sum()), float(values[-1])))
        found[name] = tuple(rows)
    return found


def _count(values) -> dict:
    counts = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def check_loop(model_fn: Callable[[], keras.Model], train: Callable, x, y, *, epochs: int,
               batch_size: int, validation_data=None) -> LoopReport:
    """Run your loop ``train(model, x, y, epochs, batch_size)`` on a model from `model_fn()`
    and report which samples each epoch's steps saw (`LoopReport`; ``print(report)`` gives
    the checklist). With `validation_data` ``(x_val, y_val)`` it is called as
    ``train(model, x, y, epochs, batch_size, validation_data=(x_val, y_val))``, and your loop's
    validation calls are checked too. When your loop returns what it reports per epoch (a dict
    such as ``{"loss": [...], "accuracy": [...]}``, or fit's ``History``), its training
    ``"loss"`` and ``"accuracy"`` are checked against the epoch's running mean (validation
    values are not). `x` must be a NumPy array; its rows must be distinct (duplicates are
    counted as their first occurrence)."""
    began = time.perf_counter()
    x, y = np.asarray(x), np.asarray(y)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise DoctorError(f"epochs={epochs!r}: it must be an int >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DoctorError(f"batch_size={batch_size!r}: it must be an int >= 1")
    model = _new_model(model_fn)
    recorder = _Recorder(x, None if validation_data is None else np.asarray(validation_data[0]))
    original = _instrument(model, recorder)
    try:
        if validation_data is None:
            returned = train(model, x, y, epochs, batch_size)
        else:
            returned = train(model, x, y, epochs, batch_size, validation_data=validation_data)
    except Exception as error:
        raise DoctorError(f"your loop raised {type(error).__name__}: {error}") from error
    finally:
        model.__class__ = original
    steps = [call for call in recorder.calls if call.kind == "train"]
    if not steps or len(steps) % epochs:
        raise DoctorError(f"your loop called the model on training data {len(steps)} times, "
                          f"which is not the same number of steps in each of {epochs} epochs")
    per_epoch = len(steps) // epochs
    epoch_steps = [steps[e * per_epoch:(e + 1) * per_epoch] for e in range(epochs)]
    orders = tuple(np.concatenate([s.indices for s in ep]) for ep in epoch_steps)
    batch_sizes = tuple(tuple(len(s.indices) for s in ep) for ep in epoch_steps)
    n = len(x)
    repeated = tuple(int(np.sum(np.bincount(o, minlength=n) > 1)) for o in orders)
    unseen = tuple(int(np.sum(np.bincount(o, minlength=n) == 0)) for o in orders)
    new_orders = sum(not np.array_equal(a, b) for a, b in zip(orders, orders[1:]))
    file_order = sum(np.array_equal(o, np.arange(len(o))) for o in orders)
    validation = [c for c in recorder.calls if c.kind == "validation"]
    differences = []
    if file_order == epochs or new_orders < epochs - 1:
        differences.append("shuffle")
    if n % batch_size and any(sum(sizes) < n for sizes in batch_sizes):
        differences.append("partial_batch")
    if any(repeated):
        differences.append("replacement")
    if any(call.training is True for call in validation):
        differences.append("validation_training")
    metrics = _metrics(model, y, epoch_steps, _history(returned), epochs)
    if any(_kind(*values) != "the running mean" for rows in metrics.values() for values in rows):
        differences.append("running_mean_metrics")
    return LoopReport(n, batch_size, tuple(differences), orders, batch_sizes, new_orders,
                      file_order, repeated, unseen, _count(s.training for s in steps),
                      _count(c.training for c in validation), metrics,
                      time.perf_counter() - began)
