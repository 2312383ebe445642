"""Interchangeable ways to train a compiled Keras classifier: fit, the article's tape loop, a
tape loop that is fit, and every loop in between.

Every training function has the same signature, so cross-validation, notebooks and tests can swap
them::

    history = train(model, (x_train, y_train), (x_val, y_val),
                    epochs=..., batch_size=..., seed=..., verbose=0)

and returns a History-like dict of per-epoch lists under fit's keys -- for the article's compile
call ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` (`HISTORY_KEYS`), else one per
compiled metric -- plus ``seconds`` (wall time of each epoch, validation included). The model must
be compiled: the optimizer, loss and metrics given to `compile` are the ones used. `train_fit` and
`train_matched` also take fit's ``sample_weight``, ``class_weight`` and ``validation_split``
(notebook 03a lists every fit option and the test that shows the loop reproduces it). Each also
takes fit's ``callbacks=`` and ``initial_epoch=``: the tape loops drive Keras callbacks through
``keras.callbacks.CallbackList`` as fit does (`_run_epochs`), and the History then also holds
whatever the callbacks log (e.g. ``learning_rate``).

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
  (tests/test_training.py). Both are asserted on CPU with the pinned and with the oldest
  supported TensorFlow/Keras (helpers.notebook.environment); versions in between are not tested.
- ``METHODS`` names them all for `helpers.experiments.cv.cross_validate`, including the ablation's 8
  variants (`ablation_variants`): the article's loop with one fix (``naive+<key>``) and the
  matched loop without one (``matched-<key>``).

Where each behaviour of fit lives, Keras 3.15.1 source, TensorFlow backend (lines of the pin):
- ``training=True``, loss, gradient, update, metrics: keras/src/backend/tensorflow/trainer.py:53-88
  (``train_step``); inference-mode validation: same file, ``test_step`` at :90.
- the loss is the compiled loss (reduction ``sum_over_batch_size``) plus the sum of each of
  ``model.losses``, added with ``ops.sum``: keras/src/trainers/trainer.py:385-401.
- shuffling: one ``tf.random.shuffle`` of all indices per iterator,
  keras/src/trainers/data_adapters/array_data_adapter.py:128-134; the last partial batch is kept.
- iterators: a new one at each epoch's start, and one more made and thrown away at each epoch's
  end, keras/src/trainers/epoch_iterator.py:105-126.
- validation_split, class_weight: keras/src/backend/tensorflow/trainer.py:342-357 and
  keras/src/trainers/data_adapters/array_data_adapter.py:31-74; loss scaling: ``scale_loss`` in
  ``train_step`` (trainer.py:75-76 of the TensorFlow backend); EMA: ``finalize_variable_values``
  after the last epoch (same file, :447).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras.src.trainers.data_adapters import array_slicing, data_adapter_utils

from helpers.compat import KERAS_GATES, supports
from helpers.differences import DIFFERENCE_KEYS, DIFFERENCES  # noqa: F401 (re-exported)

try:  # fit's loss tracker gets the loss times the number of replicas (trainer.py:69-74)
    from keras.src.losses.loss import unscale_loss_for_distribution
except ImportError:  # Keras before 3.15 lacks it; there the distributed loop is refused
    # (helpers.compat.KERAS_GATES["strategy"]), and on one device unscaling is the identity.
    def unscale_loss_for_distribution(loss):
        return loss

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


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


def _metric_logs(metrics, as_float: bool = True) -> dict:
    """Each metric's running value by name, a compiled-metrics container's results flattened into
    it, as ``model.get_metrics_result`` does (keras/src/trainers/trainer.py:529-546); as floats,
    or as the tensors fit hands its per-batch callbacks (`as_float` False)."""
    logs = {}
    for metric in metrics:
        result = metric.result()
        if isinstance(result, dict):
            logs.update(result)
        else:
            logs[metric.name] = result
    return {name: float(value) for name, value in logs.items()} if as_float else logs


def _require_compiled(model: keras.Model) -> None:
    if getattr(model, "optimizer", None) is None or model.loss is None:
        raise ValueError(
            f"model {model.name!r} is not compiled: call model.compile(optimizer=..., loss=..., "
            "metrics=['accuracy']) first; the training functions use its optimizer and loss"
        )


def _loss_tracker(model: keras.Model) -> keras.metrics.Mean:
    """The Mean named ``loss`` that compile() creates and fit's steps update (trainer.py:220);
    Keras has no public handle on it other than its place in ``model.metrics``."""
    return model._loss_tracker


def _build_like_fit(model: keras.Model, x, y, sample_weight=None) -> None:
    """Create the compiled loss's and metrics' state and the optimizer's variables before the
    first step, as fit does (``_symbolic_build``, trainer.py:1125-1205: shapes only, nothing is
    computed). Created inside the first call of a tf.function instead, they make it trace
    twice."""
    _require_compiled(model)
    model._symbolic_build(data_batch=(x, y) if sample_weight is None else (x, y, sample_weight))


class _Evaluator:
    """Validation as fit runs it (``test_step``, keras/src/backend/tensorflow/trainer.py:90-104,
    on the model's own metrics, reset first): ``training=False``, batches of `batch_size` with the
    partial batch kept, the compiled loss + model.losses (``compute_loss``), the loss tracker's
    running mean weighted by batch size, the compiled metrics through ``compute_metrics`` with
    the validation sample weights if given; logs prefixed ``val_`` (trainer.py:433-435).
    `_step` is that test step, also per replica under a strategy (helpers.training.distributed runs
    it
    there with its own `_run_steps`)."""

    def __init__(self, model, val_data, batch_size, compiled):
        self.model, self.batch_size = model, batch_size
        # x, y and the sample weights, if any (fit also takes (x, y, None))
        self.tensors = tuple(tf.convert_to_tensor(a) for a in val_data if a is not None)
        self.metrics = tuple(model.metrics)
        # Batch dimension None: the partial last batch reuses the one trace.
        signature = [tf.TensorSpec([None, *t.shape[1:]], t.dtype) for t in self.tensors]
        self.step = (tf.function(self._step, input_signature=signature) if compiled
                     else self._step)

    def _step(self, x, y, sample_weight=None):
        y_pred = self.model(x, training=False)
        loss = self.model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                        training=False)
        # unscaled as fit's test_step does (trainer.py:99-104): the identity on one device
        _loss_tracker(self.model).update_state(unscale_loss_for_distribution(loss),
                                               sample_weight=tf.shape(x)[0])
        self.model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _run_steps(self) -> None:
        """The test step on every validation batch, in order."""
        for start in range(0, int(self.tensors[0].shape[0]), self.batch_size):
            self.step(*(t[start:start + self.batch_size] for t in self.tensors))

    def __call__(self) -> dict[str, float]:
        """One validation pass; fit's ``val_*`` logs."""
        for metric in self.metrics:
            metric.reset_state()
        self._run_steps()
        return {f"val_{name}": value for name, value in _metric_logs(self.metrics).items()}


class EpochTimer(keras.callbacks.Callback):
    """Records each epoch's wall time (fit's epoch, validation included) in ``seconds``."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.seconds = []


def ordered_dataset(x, y, batch_size: int, batch_orders, sample_weight=None) -> tf.data.Dataset:
    """All epochs' batches in the given order, one epoch after another, each epoch ending with its
    partial batch (with each sample's weight as a third element when `sample_weight` is given).
    Fed to fit with ``steps_per_epoch``, fit keeps one iterator across epochs
    (epoch_iterator.py:110), so epoch e sees exactly ``batch_orders[e]``."""
    arrays = tuple(tf.convert_to_tensor(a) for a in (x, y, sample_weight) if a is not None)
    per_epoch = [
        tf.data.Dataset.from_tensor_slices(order).batch(batch_size) for order in batch_orders
    ]
    indices = per_epoch[0]
    for epoch_indices in per_epoch[1:]:
        indices = indices.concatenate(epoch_indices)
    return indices.map(lambda idx: tuple(tf.gather(a, idx) for a in arrays))


def _single_array(name, value) -> None:
    if isinstance(value, (dict, list, tuple)):
        raise NotImplementedError(
            f"{name} is a {type(value).__name__}: the tape loops take one array of inputs and one "
            "of targets (a model with several inputs or outputs is not supported); fit would "
            "accept it, so it is refused rather than trained differently"
        )


def arrays_like_fit(train_data, val_data, *, sample_weight=None, class_weight=None,
                    validation_split: float = 0.0):
    """The training and validation arrays fit makes from these arguments, by Keras' own code
    (keras/src/backend/tensorflow/trainer.py:342-357, array_data_adapter.py:31-74):

    - `validation_split` (when `val_data` is None; else fit ignores it): the *last* fraction of
      ``(x, y, sample_weight)`` before any shuffling (``array_slicing.train_validation_split``);
    - `class_weight` -> one weight per training sample (``class_weight_to_sample_weights``),
      not given together with `sample_weight`. Validation samples get no class weights.

    Returns ``(x, y, sample_weight), val_data``: `sample_weight` None when unweighted,
    `val_data` None (no validation), ``(x, y)`` or ``(x, y, sample_weight)``.
    """
    x, y = train_data
    _single_array("x", x)
    _single_array("y", y)
    if sample_weight is not None and class_weight is not None:
        raise ValueError("You cannot `class_weight` and `sample_weight` at the same time "
                         "(as fit: array_data_adapter.py:31-35)")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split={validation_split}; it must be in [0, 1)")
    if validation_split and val_data is None:
        (x, y, sample_weight), (x_val, y_val, sw_val) = array_slicing.train_validation_split(
            (x, y, sample_weight), validation_split=validation_split)
        val_data = (x_val, y_val) if sw_val is None else (x_val, y_val, sw_val)
    if class_weight is not None:
        sample_weight = data_adapter_utils.class_weight_to_sample_weights(y, class_weight)
    return (x, y, sample_weight), val_data


def train_fit(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
              batch_orders=None, sample_weight=None, class_weight=None, validation_split=0.0,
              callbacks=None, initial_epoch=0):
    """``model.fit`` as the article calls it (NumPy arrays, ``shuffle=True``).

    With `batch_orders` (shape (epochs, N), e.g. from `epoch_orders`), fit instead trains on
    exactly those orders; that is how notebook 03 and the tests give fit and a tape loop the same
    batches. `seed` is not used here: fit's shuffling follows the global seed, which `create_cnn`
    sets. `sample_weight`, `class_weight` and `validation_split` are fit's; with `batch_orders`
    they are applied first by `arrays_like_fit` (fit's own code), so N is the number of
    training samples after the split. `val_data` may be None (no validation unless
    `validation_split`) or carry validation sample weights as a third array. `callbacks` and
    `initial_epoch` are fit's. Returns every History key fit logged (fit's names: one per
    compiled metric, and whatever the callbacks log, e.g. ``learning_rate`` from
    ReduceLROnPlateau), plus ``seconds``.
    """
    _require_compiled(model)
    timer = EpochTimer()
    if batch_orders is None:
        x, y = train_data
        inputs = dict(x=x, y=y, batch_size=batch_size, shuffle=True, sample_weight=sample_weight,
                      class_weight=class_weight, validation_split=validation_split)
    else:
        (x, y, weights), val_data = arrays_like_fit(
            train_data, val_data, sample_weight=sample_weight, class_weight=class_weight,
            validation_split=validation_split)
        batch_orders = _check_orders(batch_orders, len(x), epochs)
        inputs = dict(
            # fit starts at `initial_epoch` but reads the dataset from its start
            x=ordered_dataset(x, y, batch_size, batch_orders[initial_epoch:], weights),
            steps_per_epoch=math.ceil(len(x) / batch_size),
            shuffle=False,  # the order is in the dataset
        )
    history = model.fit(
        **inputs, epochs=epochs, validation_data=val_data, validation_batch_size=batch_size,
        verbose=verbose, callbacks=[*(callbacks or ()), timer], initial_epoch=initial_epoch,
    )
    return {**{key: [float(v) for v in values] for key, values in history.history.items()},
            "seconds": timer.seconds}


class TrainStep(NamedTuple):
    """A training step ``step(x_batch, y_batch[, sample_weight])`` and the History metrics it
    updates (the model's own ``model.metrics``: the loss tracker first, then the compiled
    metrics)."""

    step: Callable
    metrics: tuple[keras.metrics.Metric, ...]

    def reset_metrics(self) -> None:
        for metric in self.metrics:
            metric.reset_state()

    def logs(self) -> dict[str, float]:
        """fit's training logs: each metric's running value, under fit's History names."""
        return _metric_logs(self.metrics)


def _overrides(model: keras.Model, method: str) -> bool:
    return getattr(type(model), method) is not getattr(keras.Model, method)


def _compile_argument(model: keras.Model, name: str):
    """What compile() was given as `name`, unserialized (compile keeps its arguments,
    trainer.py:227-236; ``get_compile_config`` would serialize the optimizer and loss too)."""
    return model._compile_config.config.get(name)


def check_reproducible(model: keras.Model, fixes=DIFFERENCE_KEYS, *, weighted: bool = False):
    """Raise for a compiled model, option or data that `train_tape_loop` with these `fixes`
    would train differently from fit, naming it, so that the loop never trains silently
    differently. What the matched loop (all fixes) refuses:

    - a model class that overrides ``train_step`` or ``test_step`` (fit runs the override;
      this loop is fit's default step, trainer.py:53-104);
    - a ``tf.distribute`` strategy with several replicas (fit splits each batch between
      replicas; this loop runs one);

    and what a variant without the ``"mean_loss"`` fix (the article's per-sample loss vector,
    no ``compute_loss``) cannot do as fit does: sample or class weights (`weighted`), loss
    scaling (a ``LossScaleOptimizer``, compile's wrapper under ``mixed_float16``, or
    ``loss_scale_factor``), ``loss_weights``, a ``compute_loss`` override, a loss given per
    output (dict or list) and ``use_ema``.
    """
    _require_compiled(model)
    refused = []
    for method in ("train_step", "test_step"):
        if _overrides(model, method):
            refused.append(f"a custom {method} ({type(model).__name__}.{method})")
    replicas = model.distribute_strategy.num_replicas_in_sync
    if replicas > 1:
        refused.append(f"a distribution strategy with {replicas} replicas")
    if (isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            and not supports("loss_scaling")):
        gate = KERAS_GATES["loss_scaling"]
        refused.append(f"{gate.what} with Keras {keras.__version__}: {gate.why}")
    if "mean_loss" not in fixes:
        optimizer = model.optimizer
        needs = {
            "sample_weight or class_weight": weighted,
            "loss scaling (LossScaleOptimizer, e.g. under a mixed_float16 policy)":
                isinstance(optimizer, keras.optimizers.LossScaleOptimizer),
            "loss_scale_factor": getattr(optimizer, "loss_scale_factor", None) is not None,
            "use_ema": bool(getattr(optimizer, "use_ema", False)),
            "loss_weights": _compile_argument(model, "loss_weights") is not None,
            f"a custom compute_loss ({type(model).__name__}.compute_loss)":
                _overrides(model, "compute_loss"),
            "a loss per output (dict or list)": isinstance(model.loss, (dict, list, tuple)),
        }
        refused += [f"{option} needs the 'mean_loss' fix (the article's per-sample loss vector "
                    "does not do it)" for option, needed in needs.items() if needed]
    if refused:
        raise NotImplementedError(
            f"the tape loop (fixes={tuple(fixes)}) cannot reproduce fit for model "
            f"{model.name!r} with: " + "; ".join(refused)
        )


def tape_train_step(model: keras.Model, x, y, *, dropout: bool, mean_loss: bool,
                    sample_weight=None, transform_gradients=None) -> TrainStep:
    """One GradientTape training step with two of the `DIFFERENCES` switchable, for data like
    `x`, `y` (and `sample_weight`, whose presence makes the step take a third argument).

    - `dropout`: ``model(x, training=True)`` as fit calls it (trainer.py:60), else ``model(x)``
      with ``training`` unset, as the article does, so Dropout is off;
    - `mean_loss`: fit's loss and update (keras/src/backend/tensorflow/trainer.py:53-88):
      ``compute_loss`` -- the compiled loss, sample-weighted and reduced as compiled, plus each of
      ``model.losses`` (trainer.py:385-401) --, the loss tracker updated with it (unscaled by
      ``unscale_loss_for_distribution`` as fit does, trainer.py:69-74: the identity on one
      device; under a strategy helpers.training.distributed runs this step per replica), then
      ``optimizer.scale_loss`` (the loss scale of a ``LossScaleOptimizer`` under
      ``mixed_float16``; the identity otherwise) before the gradient, which
      ``apply_gradients`` unscales; else the article's per-sample loss vector, whose gradient is
      that of its *sum* over the batch (`check_reproducible` refuses what that cannot do).

    Then the compiled metrics through ``model.compute_metrics`` from the same forward pass, as
    fit does, so History has whatever ``compile(metrics=..., weighted_metrics=...)`` asked for.
    Clipping (``clipnorm``, ``global_clipnorm``), ``gradient_accumulation_steps``, learning-rate
    schedules, EMA and variable constraints (e.g. ``MaxNorm``) live in the optimizer's
    ``apply_gradients`` and so are applied exactly as in fit.

    `transform_gradients`, ``transform_gradients(gradients) -> gradients``, changes the gradients
    between the tape and the optimizer (a custom step;
    `helpers.training.custom_step.layer_clipped`). Under
    loss scaling the gradients it would see are scaled, so it is refused there.
    """
    if transform_gradients is not None and isinstance(
            model.optimizer, keras.optimizers.LossScaleOptimizer):
        raise NotImplementedError("transform_gradients under loss scaling (mixed_float16): the "
                                  "gradients it would see are scaled")
    if sample_weight is not None and not mean_loss:
        raise NotImplementedError("sample weights need the 'mean_loss' fix")
    _build_like_fit(model, x, y, sample_weight)
    optimizer = model.optimizer
    loss_tracker = _loss_tracker(model)
    if not mean_loss:
        per_sample_loss = keras.losses.get(model.loss)
        if isinstance(per_sample_loss, keras.losses.Loss):
            per_sample_loss = per_sample_loss.call  # the unreduced per-sample values

    def forward(x_batch):
        return model(x_batch, training=True) if dropout else model(x_batch)

    def update(tape, loss, x_batch, y_batch, y_pred, weights):
        grads = tape.gradient(loss, model.trainable_weights)
        if transform_gradients is not None:
            grads = transform_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        model.compute_metrics(x_batch, y_batch, y_pred, sample_weight=weights)

    if mean_loss:
        def train_step(x_batch, y_batch, weights=None):
            with tf.GradientTape() as tape:
                y_pred = forward(x_batch)
                loss = model._compute_loss(x=x_batch, y=y_batch, y_pred=y_pred,
                                           sample_weight=weights, training=True)
                loss_tracker.update_state(unscale_loss_for_distribution(loss),
                                          sample_weight=tf.shape(x_batch)[0])
                loss = optimizer.scale_loss(loss)
            update(tape, loss, x_batch, y_batch, y_pred, weights)
    else:
        def train_step(x_batch, y_batch):
            with tf.GradientTape() as tape:
                y_pred = forward(x_batch)
                loss = per_sample_loss(y_batch, y_pred)
            loss_tracker.update_state(loss)  # the per-sample values: the same running mean
            update(tape, loss, x_batch, y_batch, y_pred, None)

    return TrainStep(train_step, tuple(model.metrics))


def naive_train_step(model: keras.Model, x, y) -> TrainStep:
    """The article's step: ``training`` unset, the per-sample loss vector differentiated."""
    return tape_train_step(model, x, y, dropout=False, mean_loss=False)


def matched_train_step(model: keras.Model, x, y, sample_weight=None) -> TrainStep:
    """fit's step (trainer.py:53-88): ``training=True``, ``compute_loss`` (batch-mean loss +
    model.losses), loss scaling, update, compiled metrics from the same forward pass."""
    return tape_train_step(model, x, y, dropout=True, mean_loss=True, sample_weight=sample_weight)


def indexed_train_step(batch_step, x_all, y_all, batch_size: int, steps_per_execution: int = 1,
                       sample_weight_all=None):
    """A step that takes sample *indices* and gathers its batch from the tensors `x_all`, `y_all`
    (and `sample_weight_all`, if given) -- so every batch, the partial one too, is an int64
    vector of unknown length and one ``tf.function`` trace serves them all. With
    `steps_per_execution` > 1 it takes the indices of that many consecutive batches and trains
    them one after another in a loop (a graph ``while`` loop under tf.function)."""
    arrays = tuple(a for a in (x_all, y_all, sample_weight_all) if a is not None)

    def gathered_step(indices):
        batch_step(*(tf.gather(a, indices) for a in arrays))

    if steps_per_execution == 1:
        return gathered_step

    def train_step(indices):
        for start in tf.range(0, tf.size(indices, out_type=tf.int64), batch_size):
            gathered_step(indices[start:start + batch_size])
    return train_step


def _run_epochs(train_step, batches, steps, epochs, step_metrics: TrainStep, evaluate, verbose,
                steps_per_call=1, *, model, callbacks=None, initial_epoch=0):
    """fit's epoch loop (keras/src/backend/tensorflow/trainer.py:375-453), driving the callbacks
    through Keras' own ``CallbackList`` with fit's hooks, logs and order: ``on_train_begin``;
    per epoch ``on_epoch_begin``, then for every call of ``train_step(*batch)`` (one batch, or a
    group of `steps_per_call`) ``on_train_batch_begin(first)`` / ``on_train_batch_end(last,
    logs)`` with fit's step numbers (epoch_iterator.py:113-123), stopping the epoch early when a
    callback sets ``model.stop_training``; validation between ``on_test_begin`` and
    ``on_test_end`` (fit runs it through ``evaluate(callbacks=...)``, trainer.py:423-432; the
    per-batch ``on_test_batch_*`` hooks are not called); ``on_epoch_end(epoch, logs)`` with the
    training logs plus ``val_*``; stop after the epoch if ``model.stop_training``;
    ``on_train_end``. Keras' ``History`` and ``ProgbarLogger`` are added as fit adds them
    (``add_history=True``, ``add_progbar=verbose != 0``), so the progress bar is fit's.

    Epochs run from `initial_epoch` to `epochs` (fit's meaning, for resuming); ``batches(epoch)``
    yields the epoch's calls. Returns ``History.history`` (every key the callbacks logged, e.g.
    ``learning_rate`` from ReduceLROnPlateau) plus ``seconds``.
    """
    timer = EpochTimer()
    callback_list = keras.callbacks.CallbackList(
        [*(callbacks or ()), timer], add_history=True, add_progbar=verbose != 0,
        verbose=verbose, epochs=epochs, steps=steps, model=model,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    training_logs = None
    for epoch in range(initial_epoch, epochs):
        step_metrics.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for call, batch in enumerate(batches(epoch)):
            first_step = call * steps_per_call
            callback_list.on_train_batch_begin(first_step)
            train_step(*batch)
            # tensors, as fit passes them: CallbackList converts them to floats, in a
            # background thread when no callback reads them per batch (callback_list.py)
            callback_list.on_train_batch_end(
                first_step + steps_per_call - 1,
                dict(sorted(_metric_logs(step_metrics.metrics, as_float=False).items())))
            if model.stop_training:
                break
        epoch_logs = step_metrics.logs()
        callback_list.on_test_begin()
        val_logs = evaluate()
        callback_list.on_test_end({key.removeprefix("val_"): value
                                   for key, value in val_logs.items()})
        # sorted by name, as fit's logs are (keras/src/utils/python_utils.py:182, pythonify_logs),
        # so the progress bar and History list the metrics in fit's order
        epoch_logs = dict(sorted({**epoch_logs, **val_logs}.items()))
        callback_list.on_epoch_end(epoch, epoch_logs)
        training_logs = epoch_logs
        if model.stop_training:
            break
    callback_list.on_train_end(logs=training_logs)
    return {**model.history.history, "seconds": timer.seconds}


def train_tape_loop(model, train_data, val_data, *, epochs, batch_size, seed, fixes,
                    verbose=0, batch_orders=None, compiled=True, steps_per_execution=1,
                    sample_weight=None, class_weight=None, validation_split=0.0,
                    callbacks=None, initial_epoch=0, make_step=None):
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

    fit's other options, with fit's semantics (tests/test_fit_options.py, notebook 03a):
    `sample_weight`, `class_weight` and `validation_split` as `arrays_like_fit` prepares them
    (N is then the number of training samples after the split); `val_data` may be None or
    ``(x, y, sample_weight)``; whatever compile() set up -- metrics, loss weights, loss scaling,
    clipping, accumulation, schedules, EMA, constraints -- through the model and its optimizer
    (`tape_train_step`). Options a variant cannot reproduce raise `NotImplementedError`
    (`check_reproducible`). As fit does after its last epoch, ``finalize_variable_values`` then
    gives an EMA optimizer's averages to the weights (keras/src/backend/tensorflow/
    trainer.py:447).

    `callbacks` and `initial_epoch` mean what they mean to fit: Keras callbacks, driven by
    `_run_epochs` through ``keras.callbacks.CallbackList`` with fit's hooks and logs
    (tests/test_callbacks.py), and the epoch to start at when resuming (epoch e still trains on
    ``batch_orders[e]``; helpers.training.checkpoints).

    `make_step`, ``make_step(model, x, y) -> TrainStep``, replaces the step (e.g.
    `helpers.training.custom_step.layer_clipped`); it then decides how the model is called and what
    is
    differentiated, so it needs the ``"dropout"`` and ``"mean_loss"`` fixes on, and no sample
    weights (it is refused otherwise rather than silently ignoring them).
    """
    unknown = set(fixes) - set(DIFFERENCE_KEYS)
    if unknown:
        raise ValueError(f"unknown fixes {sorted(unknown)}; known: {list(DIFFERENCE_KEYS)}")
    if make_step is not None and not {"dropout", "mean_loss"} <= set(fixes):
        raise ValueError("make_step replaces the step, so the step's fixes 'dropout' and "
                         f"'mean_loss' must both be in fixes; got fixes={tuple(fixes)}")
    if steps_per_execution < 1:
        raise ValueError(f"steps_per_execution={steps_per_execution}; it must be >= 1")
    (x, y, sample_weight), val_data = arrays_like_fit(
        train_data, val_data, sample_weight=sample_weight, class_weight=class_weight,
        validation_split=validation_split)
    check_reproducible(model, fixes, weighted=sample_weight is not None)
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
    weights_all = None if sample_weight is None else tf.convert_to_tensor(sample_weight)
    if make_step is not None and sample_weight is not None:
        raise NotImplementedError("make_step does not take sample weights (sample_weight, "
                                  "class_weight)")
    step = (make_step(model, x, y) if make_step is not None else
            tape_train_step(model, x, y, dropout="dropout" in fixes,
                            mean_loss="mean_loss" in fixes, sample_weight=sample_weight))
    evaluate = (dict if val_data is None  # no validation: no val_* logs, as in fit
                else _Evaluator(model, val_data, batch_size, compiled))

    train_step = indexed_train_step(step.step, x_all, y_all, batch_size, steps_per_execution,
                                    weights_all)
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
                          steps_per_execution, model=model, callbacks=callbacks,
                          initial_epoch=initial_epoch)
    if "mean_loss" in fixes:  # else check_reproducible refused use_ema
        model.optimizer.finalize_variable_values(model.trainable_weights)
    train_tape_loop.last_step = train_step  # lets tests and notebook 06 inspect tracing
    return history


def train_naive(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
                compiled=True, steps_per_execution=1, callbacks=None, initial_epoch=0):
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
                           steps_per_execution=steps_per_execution, callbacks=callbacks,
                           initial_epoch=initial_epoch)


def train_matched(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
                  batch_orders=None, compiled=True, steps_per_execution=1, sample_weight=None,
                  class_weight=None, validation_split=0.0, callbacks=None, initial_epoch=0,
                  make_step=None):
    """A GradientTape loop that does what fit does (see the module docstring for where):
    `train_tape_loop` with every one of the `DIFFERENCES` fixed.

    - a new permutation of all samples every epoch (from `seed`, or exactly `batch_orders`);
    - ``model(x, training=True)`` so Dropout and BatchNormalization train;
    - loss = fit's ``compute_loss`` (batch-mean compiled loss, sample-weighted if asked, + sum of
      model.losses), scaled by the optimizer as fit does, and its gradient (not the per-sample
      sum);
    - every sample every epoch: ``ceil(N / batch_size)`` steps, partial batch kept;
    - History: the model's own metrics (loss tracker and compiled metrics, fit's names), running
      per-sample means from the same forward pass as the update, reset each epoch; validation
      in inference mode;
    - one ``tf.function`` step, traced once, also for the partial batch.

    `steps_per_execution`, `sample_weight`, `class_weight`, `validation_split`, `callbacks`,
    `initial_epoch`, `make_step`: see `train_tape_loop`.
    """
    history = train_tape_loop(
        model, train_data, val_data, epochs=epochs, batch_size=batch_size, seed=seed,
        fixes=DIFFERENCE_KEYS, verbose=verbose, batch_orders=batch_orders, compiled=compiled,
        steps_per_execution=steps_per_execution, sample_weight=sample_weight,
        class_weight=class_weight, validation_split=validation_split, callbacks=callbacks,
        initial_epoch=initial_epoch, make_step=make_step)
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
