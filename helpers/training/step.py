"""fit's training step once, with the article's two step-level differences switchable, and fit's
validation step; the checks that refuse what a step cannot reproduce.

- `tape_train_step`: the one GradientTape step (`matched_train_step` is fit's, all switches on;
  none on is the article's), returned as a `TrainStep` with the History metrics it updates;
- `indexed_train_step`: a step that gathers its batch (or `steps_per_execution` batches) from
  index vectors, so that one trace serves every batch (`indexed_signature`);
- `Evaluator`: validation as fit runs it after each epoch;
- `check_reproducible`: what the tape loop refuses, by name, rather than train differently.

Where each behaviour of fit lives (Keras 3.15.1 source, TensorFlow backend):
``training=True``, loss, gradient, update and metrics in keras/src/backend/tensorflow/trainer.py:
``TensorFlowTrainer.train_step``; inference-mode validation in ``TensorFlowTrainer.test_step`` of
the same file; the loss is the compiled loss (reduction ``sum_over_batch_size``) plus the sum of
each of ``model.losses``, added with ``ops.sum``: keras/src/trainers/trainer.py:
``Trainer.compute_loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import keras
import tensorflow as tf

from helpers import compat
from helpers.differences import DIFFERENCE_KEYS
from helpers.training.fit import require_compiled


def metric_logs(metrics, as_float: bool = True) -> dict:
    """Each metric's running value by name, a compiled-metrics container's results flattened into
    it, as keras/src/trainers/trainer.py: ``Trainer.get_metrics_result`` does; as floats, or as
    the tensors fit hands its per-batch callbacks (`as_float` False)."""
    logs = {}
    for metric in metrics:
        result = metric.result()
        if isinstance(result, dict):
            logs.update(result)
        else:
            logs[metric.name] = result
    return {name: float(value) for name, value in logs.items()} if as_float else logs


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
        return metric_logs(self.metrics)


def overrides(model: keras.Model, method: str) -> bool:
    """Whether `model`'s class replaces ``keras.Model``'s `method` (e.g. ``train_step``)."""
    return getattr(type(model), method) is not getattr(keras.Model, method)


def check_reproducible(model: keras.Model, fixes=DIFFERENCE_KEYS, *, weighted: bool = False):
    """Raise for a compiled model, option or data that `train_tape_loop` with these `fixes`
    would train differently from fit, naming it, so that the loop never trains silently
    differently. What the matched loop (all fixes) refuses:

    - a model class that overrides ``train_step`` or ``test_step`` (fit runs the override;
      this loop is fit's default step, ``TensorFlowTrainer.train_step``/``test_step``);
    - a ``tf.distribute`` strategy with several replicas (fit splits each batch between
      replicas; this loop runs one);

    and what a variant without the ``"mean_loss"`` fix (the article's per-sample loss vector,
    no ``compute_loss``) cannot do as fit does: sample or class weights (`weighted`), loss
    scaling (a ``LossScaleOptimizer``, compile's wrapper under ``mixed_float16``, or
    ``loss_scale_factor``), ``loss_weights``, a ``compute_loss`` override, a loss given per
    output (dict or list) and ``use_ema``.
    """
    require_compiled(model)
    refused = []
    for method in ("train_step", "test_step"):
        if overrides(model, method):
            refused.append(f"a custom {method} ({type(model).__name__}.{method})")
    replicas = model.distribute_strategy.num_replicas_in_sync
    if replicas > 1:
        refused.append(f"a distribution strategy with {replicas} replicas")
    if (isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            and not compat.supports("loss_scaling")):
        gate = compat.KERAS_GATES["loss_scaling"]
        refused.append(f"{gate.what} with Keras {keras.__version__}: {gate.why}")
    if "mean_loss" not in fixes:
        optimizer = model.optimizer
        needs = {
            "sample_weight or class_weight": weighted,
            "loss scaling (LossScaleOptimizer, e.g. under a mixed_float16 policy)":
                isinstance(optimizer, keras.optimizers.LossScaleOptimizer),
            "loss_scale_factor": getattr(optimizer, "loss_scale_factor", None) is not None,
            "use_ema": bool(getattr(optimizer, "use_ema", False)),
            "loss_weights": compat.compile_argument(model, "loss_weights") is not None,
            f"a custom compute_loss ({type(model).__name__}.compute_loss)":
                overrides(model, "compute_loss"),
            "a loss per output (dict or list)": isinstance(model.loss, (dict, list, tuple)),
        }
        refused += [f"{option} needs the 'mean_loss' fix (the article's per-sample loss vector "
                    "does not do it)" for option, needed in needs.items() if needed]
    if refused:
        raise NotImplementedError(
            f"the tape loop (fixes={tuple(fixes)}) cannot reproduce fit for model "
            f"{model.name!r} with: " + "; ".join(refused)
        )


def _build_like_fit(model: keras.Model, x, y, sample_weight=None) -> None:
    """The compiled loss, metrics and optimizer built for batches like these before the first
    step, so that the step traces once (`helpers.compat.build_like_fit`)."""
    require_compiled(model)
    compat.build_like_fit(model, (x, y) if sample_weight is None else (x, y, sample_weight))


class _LossFunction(keras.losses.Loss):
    """A per-sample loss function as a ``keras.losses.Loss`` (default reduction
    ``sum_over_batch_size``, compile's), as ``keras.losses.LossFunctionWrapper`` does, which
    Keras does not export."""

    def __init__(self, function):
        super().__init__(name=getattr(function, "__name__", None))
        self.function = function

    def call(self, y_true, y_pred):
        return self.function(y_true, y_pred)


def tape_train_step(model: keras.Model, x, y, *, dropout: bool, mean_loss: bool,
                    sample_weight=None, transform_gradients=None,
                    regularization_losses: bool = True, loss_scaling: bool = True) -> TrainStep:
    """One GradientTape training step with two of the `DIFFERENCES` switchable, for data like
    `x`, `y` (and `sample_weight`, whose presence makes the step take a third argument).

    - `dropout`: ``model(x, training=True)`` as fit calls it, else ``model(x)`` with
      ``training`` unset, as the article does, so Dropout is off;
    - `mean_loss`: fit's loss and update (keras/src/backend/tensorflow/trainer.py:
      ``TensorFlowTrainer.train_step``): ``compute_loss`` -- the compiled loss, sample-weighted
      and reduced as compiled, plus each of ``model.losses`` --, the loss tracker updated with it
      (unscaled as fit does, `helpers.compat.unscale_loss_for_distribution`: the identity on one
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
    `helpers.training.custom_step.layer_clipped`). Under loss scaling the gradients it would see
    are scaled, so it is refused there.

    Two more of fit's behaviours can be switched off, for `helpers.doctor`, which matches a
    reader's step against fit's step with one behaviour left out (both on by default: fit's
    step; they act only with `mean_loss`):

    - `regularization_losses` False: ``model.losses`` left out, the compiled loss alone: the
      compiled loss as a public ``keras.losses.Loss`` (a loss given by name or function wrapped
      in one, `_LossFunction`, reduction ``sum_over_batch_size`` as compile's);
    - `loss_scaling` False: no ``optimizer.scale_loss`` before the gradient, so that under
      ``mixed_float16`` the ``LossScaleOptimizer`` divides unscaled gradients by its scale.
    """
    if transform_gradients is not None and isinstance(
            model.optimizer, keras.optimizers.LossScaleOptimizer):
        raise NotImplementedError("transform_gradients under loss scaling (mixed_float16): the "
                                  "gradients it would see are scaled")
    if sample_weight is not None and not mean_loss:
        raise NotImplementedError("sample weights need the 'mean_loss' fix")
    if not regularization_losses and (sample_weight is not None
                                      or isinstance(model.loss, (dict, list, tuple))):
        raise NotImplementedError("leaving out model.losses is for one output's loss, without "
                                  "sample weights")
    _build_like_fit(model, x, y, sample_weight)
    optimizer = model.optimizer
    loss_tracker = compat.loss_tracker(model)
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

    if not regularization_losses:
        compiled_loss = keras.losses.get(model.loss)
        if not isinstance(compiled_loss, keras.losses.Loss):
            compiled_loss = _LossFunction(compiled_loss)

    if mean_loss:
        def train_step(x_batch, y_batch, weights=None):
            with tf.GradientTape() as tape:
                y_pred = forward(x_batch)
                if regularization_losses:
                    loss = compat.compute_loss(model, x_batch, y_batch, y_pred, weights,
                                               training=True)
                else:
                    loss = compiled_loss(y_batch, y_pred)
                loss_tracker.update_state(compat.unscale_loss_for_distribution(loss),
                                          sample_weight=tf.shape(x_batch)[0])
                if loss_scaling:
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


def matched_train_step(model: keras.Model, x, y, sample_weight=None) -> TrainStep:
    """fit's step (``TensorFlowTrainer.train_step``): ``training=True``, ``compute_loss``
    (batch-mean loss + model.losses), loss scaling, update, compiled metrics from the same
    forward pass."""
    return tape_train_step(model, x, y, dropout=True, mean_loss=True, sample_weight=sample_weight)


def indexed_signature(arrays) -> tuple[tf.TensorSpec, ...]:
    """The input signature of an `indexed_train_step`'s function for `arrays`: an int64 index
    vector of unknown length, then each array with its first (sample) dimension unknown."""
    return (tf.TensorSpec([None], tf.int64),
            *(tf.TensorSpec([None, *a.shape[1:]], a.dtype) for a in arrays))


def indexed_train_step(step: TrainStep, batch_size: int,
                       steps_per_execution: int = 1) -> TrainStep:
    """`step` taking sample *indices* and the tensors they index: ``step(indices, x, y[,
    sample_weight])`` gathers its batch from `x`, `y` (all samples). Every batch, the partial one
    too, is then an int64 vector of unknown length (`indexed_signature`) and one ``tf.function``
    trace serves them all; the data being arguments, not captured, the same trace also serves
    other data of the same shapes (cross-validation's folds, helpers.training.reuse). With
    `steps_per_execution` > 1 it takes the indices of that many consecutive batches and trains
    them one after another in a loop (a graph ``while`` loop under tf.function)."""
    def gathered_step(indices, *arrays):
        step.step(*(tf.gather(a, indices) for a in arrays))

    if steps_per_execution == 1:
        return TrainStep(gathered_step, step.metrics)

    def grouped_step(indices, *arrays):
        for start in tf.range(0, tf.size(indices, out_type=tf.int64), batch_size):
            gathered_step(indices[start:start + batch_size], *arrays)
    return TrainStep(grouped_step, step.metrics)


class Evaluator:
    """Validation as fit runs it (keras/src/backend/tensorflow/trainer.py:
    ``TensorFlowTrainer.test_step`` on the model's own metrics, reset first): ``training=False``,
    batches of `batch_size` with the partial batch kept, the compiled loss + model.losses
    (``compute_loss``), the loss tracker's running mean weighted by batch size, the compiled
    metrics through ``compute_metrics`` with the validation sample weights if given; logs
    prefixed ``val_`` (as ``TensorFlowTrainer.fit`` prefixes ``evaluate``'s). `test_step` is
    that step, also per replica under a strategy (helpers.training.distributed runs it there
    with its own `run_steps`). Calling the evaluator runs one validation pass; `validate_on`
    points it at other data."""

    def __init__(self, model, val_data, batch_size, compiled):
        self.model, self.batch_size = model, batch_size
        self.validate_on(val_data)
        self.metrics = tuple(model.metrics)
        # Batch dimension None: the partial last batch reuses the one trace.
        signature = [tf.TensorSpec([None, *t.shape[1:]], t.dtype) for t in self.tensors]
        self.step = (tf.function(self.test_step, input_signature=signature) if compiled
                     else self.test_step)

    def validate_on(self, val_data) -> None:
        """Validate on `val_data` from now on: x, y and the sample weights, if any (fit also
        takes ``(x, y, None)``). The compiled step is kept (cross-validation's folds,
        helpers.training.reuse); its input signature refuses other shapes or dtypes."""
        self.tensors = tuple(tf.convert_to_tensor(a) for a in val_data if a is not None)

    def test_step(self, x, y, sample_weight=None):
        y_pred = self.model(x, training=False)
        loss = compat.compute_loss(self.model, x, y, y_pred, sample_weight, training=False)
        # unscaled as fit's test_step does: the identity on one device
        compat.loss_tracker(self.model).update_state(compat.unscale_loss_for_distribution(loss),
                                                     sample_weight=tf.shape(x)[0])
        self.model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def run_steps(self) -> None:
        """The test step on every validation batch, in order."""
        for start in range(0, int(self.tensors[0].shape[0]), self.batch_size):
            self.step(*(t[start:start + self.batch_size] for t in self.tensors))

    def __call__(self) -> dict[str, float]:
        """One validation pass; fit's ``val_*`` logs."""
        for metric in self.metrics:
            metric.reset_state()
        self.run_steps()
        return {f"val_{name}": value for name, value in metric_logs(self.metrics).items()}
