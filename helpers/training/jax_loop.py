"""The tape loops' question under Keras' JAX backend: a hand-written JAX loop (``stateless_call``,
``jax.value_and_grad``, ``jax.jit``) with the article's four `DIFFERENCES` switchable, and the
step of keras.io's guide "Writing a training loop from scratch in JAX". Loads no TensorFlow.

- `jax_train_step`: fit's JAX step (`matched`), or the article's, or anything in between;
- `guide_train_step`: the guide's step as written, ``training`` unset unless asked for;
- `cache_compilations`: JAX's compilation cache, so that each fold does not compile again;
- `JaxLoop`: the epoch loop around either, built once, with the epoch orders fit is given
  (`helpers.training.fit.EpochOrders`), Keras' own ``CallbackList`` and ``History`` (as fit adds
  them), and fit's validation after every epoch; `train_jax_loop` builds and runs one, with
  `helpers.training`'s signature, and `train_jax_matched`, `train_jax_naive` and
  `train_guide_loop` are its named variants.

Where fit's JAX step lives (Keras 3.15.1): keras/src/backend/jax/trainer.py:
``JAXTrainer.train_step`` (``jax.value_and_grad`` of ``compute_loss_and_updates``, which calls
``stateless_call(..., training=True, return_losses=True)`` and ``stateless_compute_loss``; then
``optimizer.stateless_apply``; then ``_update_metrics_variables``: the loss tracker, weighted by
the batch size, and ``compute_metrics``, in a ``StatelessScope``), jitted once by
``JAXTrainer.make_train_function``; validation by ``JAXTrainer.test_step`` (``training=False``).
``JAXTrainer.fit`` reads the state from the model's variables at each epoch's start (after
resetting the metrics) and writes it back at the epoch's end (``jax_state_sync``), before
validation. Dropout's randomness is a ``SeedGenerator`` state among the non-trainable
variables, which ``stateless_call`` returns advanced: the loop carries it like any other state.

Under the TensorFlow backend use `helpers.training.loop` instead: this module needs JAX's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import keras
import numpy as np

from helpers import compat
from helpers.differences import DIFFERENCE_KEYS
from helpers.training.fit import EpochTimer, arrays_like_fit, loop_orders, require_compiled


class JaxState(NamedTuple):
    """Everything a stateless step reads and returns: the values of the model's trainable and
    non-trainable variables (Dropout's seed state among the latter), the optimizer's, and the
    metrics' (fit's order, ``JAXTrainer.train_step``)."""

    trainable: list
    non_trainable: list
    optimizer: list
    metrics: list

    @classmethod
    def of(cls, model: keras.Model) -> JaxState:
        """The current values of `model`'s variables (``JAXTrainer._get_jax_state``)."""
        return cls(*([v.value for v in variables] for variables in _variable_groups(model)))

    def assign_to(self, model: keras.Model) -> None:
        """Write these values back into `model`'s variables (``JAXTrainer.jax_state_sync``)."""
        for variables, values in zip(_variable_groups(model), self):
            for variable, value in zip(variables, values):
                variable.assign(value)


def _variable_groups(model):
    return (model.trainable_variables, model.non_trainable_variables,
            model.optimizer.variables, model.metrics_variables)


def cache_compilations(folder) -> None:
    """Keep every XLA program JAX compiles in `folder` (JAX's persistent compilation cache,
    for programs of any size and compile time), so that the next model with the same shapes
    -- the next fold, the next method with the same step -- loads its step instead of compiling
    it again: compiling this CNN's step takes far longer than training a few epochs on a
    small subset. The programs, and so the arithmetic, are the same."""
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def check_jax_backend() -> None:
    """Raise unless Keras runs on its JAX backend (this module's loops are JAX programs)."""
    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"the JAX loop needs Keras' JAX backend; this Keras runs on "
            f"{keras.backend.backend()!r}: set KERAS_BACKEND=jax before Keras is imported")


def _check_matchable(model: keras.Model) -> None:
    """Refuse, by name, what this loop would train differently from fit."""
    require_compiled(model)
    refused = [f"a custom {method} ({type(model).__name__}.{method})"
               for method in ("train_step", "test_step", "compute_loss")
               if getattr(type(model), method) is not getattr(keras.Model, method)]
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        refused.append("loss scaling (LossScaleOptimizer, e.g. under a mixed_float16 policy)")
    if refused:
        raise NotImplementedError("the JAX loop cannot reproduce fit for model "
                                  f"{model.name!r} with: " + "; ".join(refused))


def _update_metrics(model, metrics_values, loss, x, y, y_pred, sample_weight):
    """fit's metric update, stateless (``JAXTrainer._update_metrics_variables``): the loss
    tracker weighted by the batch size, then the compiled metrics. Returns (logs, new values)."""
    mapping = list(zip(model.metrics_variables, metrics_values))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        compat.loss_tracker(model).update_state(loss, sample_weight=x.shape[0])
        logs = model.compute_metrics(x, y, y_pred, sample_weight)
    return logs, [scope.get_current_value(v) for v in model.metrics_variables]


def jax_train_step(model: keras.Model, *, dropout: bool = True, mean_loss: bool = True):
    """One jitted training step ``step(state, x, y[, sample_weight]) -> (logs, state)`` with
    the article's two step-level differences switchable:

    - `dropout`: ``stateless_call(..., training=True)`` as fit, else ``training`` unset, so
      Dropout is off;
    - `mean_loss`: fit's loss, ``stateless_compute_loss`` (the compiled loss, reduced as
      compiled, plus ``model.losses``), else the article's per-sample loss vector, whose
      gradient in JAX must be asked of its sum (what ``tape.gradient`` of a vector gives).

    Then ``optimizer.stateless_apply`` and fit's metric update. All switches on is
    ``JAXTrainer.train_step`` written with public API (and `helpers.compat.loss_tracker`)."""
    check_jax_backend()
    _check_matchable(model)
    optimizer = model.optimizer
    call_options = {"training": True} if dropout else {}
    per_sample_loss = keras.losses.get(model.loss)
    if isinstance(per_sample_loss, keras.losses.Loss):
        per_sample_loss = per_sample_loss.call  # the unreduced per-sample values

    def loss_and_updates(trainable, non_trainable, metrics_values, x, y, sample_weight):
        y_pred, non_trainable, losses = model.stateless_call(
            trainable, non_trainable, x, return_losses=True, **call_options)
        if mean_loss:
            with compat.forward_pass_losses(model, losses):
                loss, (_, non_trainable, metrics_values) = model.stateless_compute_loss(
                    trainable, non_trainable, metrics_values, x=x, y=y, y_pred=y_pred,
                    sample_weight=sample_weight, training=True)
            reported = loss
        else:
            per_sample = per_sample_loss(y, y_pred)
            loss, reported = keras.ops.sum(per_sample), keras.ops.mean(per_sample)
        return loss, (reported, y_pred, non_trainable, metrics_values)

    gradient = jax.value_and_grad(loss_and_updates, has_aux=True)

    def step(state: JaxState, x, y, sample_weight=None):
        (_, (loss, y_pred, non_trainable, metrics_values)), grads = gradient(
            state.trainable, state.non_trainable, state.metrics, x, y, sample_weight)
        trainable, optimizer_values = optimizer.stateless_apply(
            state.optimizer, grads, state.trainable)
        logs, metrics_values = _update_metrics(model, metrics_values, loss, x, y, y_pred,
                                               sample_weight)
        return logs, JaxState(trainable, non_trainable, optimizer_values, metrics_values)

    return _jit_like_fit(model, step)


def _jit_like_fit(model, step):
    """`step` jitted as ``JAXTrainer.make_train_function`` jits fit's: its state argument
    donated, and under a ``keras.distribution`` the new state laid out as the model's
    variables are (``out_shardings``), so that it stays where the next step expects it."""
    out_shardings = None
    if keras.distribution.distribution() is not None:
        out_shardings = (None, JaxState(*([v.value.sharding for v in variables]
                                          for variables in _variable_groups(model))))
    return jax.jit(step, donate_argnums=0, out_shardings=out_shardings)


def guide_train_step(model: keras.Model, *, training: bool = False):
    """The step of keras.io's guide "Writing a training loop from scratch in JAX"
    (keras-team/keras-io: guides/writing_a_custom_training_loop_in_jax.py, its
    ``compute_loss_and_updates`` and ``@jax.jit train_step`` with metrics), as written but for
    the article's model: ``model.stateless_call(trainable, non_trainable, x)`` -- ``training``
    unset, so Dropout never runs --, ``loss_fn(y, y_pred)`` (the compiled loss, mean over the
    batch), ``jax.value_and_grad(..., has_aux=True)``, ``optimizer.stateless_apply``. The guide
    tracks accuracy with its own metric's ``stateless_update_state``; here the model's
    compiled metrics are updated as fit updates them, so that History has fit's columns.
    `training` True adds ``training=True`` to ``stateless_call``, and nothing else."""
    check_jax_backend()
    _check_matchable(model)
    # the guide's Loss object (mean over the batch), e.g. CategoricalCrossentropy() for
    # compile(loss="categorical_crossentropy")
    loss_fn = keras.losses.get("".join(part.title() for part in model.loss.split("_"))
                               if isinstance(model.loss, str) else model.loss)
    optimizer = model.optimizer
    call_options = {"training": True} if training else {}

    def compute_loss_and_updates(trainable, non_trainable, x, y):
        y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                     **call_options)
        loss = loss_fn(y, y_pred)
        return loss, (y_pred, non_trainable)

    grad_fn = jax.value_and_grad(compute_loss_and_updates, has_aux=True)

    def step(state: JaxState, x, y):
        (loss, (y_pred, non_trainable)), grads = grad_fn(state.trainable, state.non_trainable,
                                                         x, y)
        trainable, optimizer_values = optimizer.stateless_apply(state.optimizer, grads,
                                                                state.trainable)
        logs, metrics_values = _update_metrics(model, state.metrics, loss, x, y, y_pred, None)
        return logs, JaxState(trainable, non_trainable, optimizer_values, metrics_values)

    return _jit_like_fit(model, step)


def _validation_step(model: keras.Model):
    """fit's validation step, stateless and jitted (``JAXTrainer.test_step``): inference mode,
    the compiled loss + ``model.losses``, fit's metric update."""

    def step(state: JaxState, x, y, sample_weight=None):
        y_pred, non_trainable, losses = model.stateless_call(
            state.trainable, state.non_trainable, x, training=False, return_losses=True)
        with compat.forward_pass_losses(model, losses):
            loss, (_, non_trainable, metrics_values) = model.stateless_compute_loss(
                state.trainable, non_trainable, state.metrics, x=x, y=y, y_pred=y_pred,
                sample_weight=sample_weight, training=False)
        _, metrics_values = _update_metrics(model, metrics_values, loss, x, y, y_pred,
                                            sample_weight)
        return state._replace(non_trainable=non_trainable, metrics=metrics_values)

    return jax.jit(step)


class JaxLoop:
    """A hand-written JAX loop, built -- and its steps jitted -- once: the `DIFFERENCES` named
    in `fixes` done as fit does them (`jax_train_step`; ``"shuffle"``: a new permutation every
    epoch, from `seed` or exactly `batch_orders`, else file order; ``"partial_batch"``: the last
    partial batch kept, else dropped), or with `guide_step` the keras.io guide's step
    (`guide_train_step`, its ``training`` on only with the ``"dropout"`` fix; it has no other
    step-level switch). `sample_weight`, `class_weight` and `validation_split` are fit's
    (`helpers.training.fit.arrays_like_fit`); `val_data` None: no validation.

    - ``run_epoch(epoch, callbacks=None)``: one epoch as ``JAXTrainer.fit`` runs it: the metrics
      reset and the state read from the model, the jitted step on every batch (split between
      the devices as fit splits it under a ``keras.distribution``), the state written back to
      the model, then validation in batches of `batch_size`; returns the epoch's logs;
    - ``train(epochs, initial_epoch=0, callbacks=None, verbose=0)``: fit's loop over the epochs
      with Keras' ``CallbackList`` and ``History`` added as fit adds them, and
      ``optimizer.finalize_variable_values`` after the last epoch; returns the History plus
      ``seconds``. Per-batch callbacks get the step's logs, but the model's variables are only
      written back at epoch ends (fit writes them back earlier only for a callback that asks,
      through its private ``_jax_state``).
    """

    def __init__(self, model, train_data, val_data, *, batch_size, seed, fixes=DIFFERENCE_KEYS,
                 guide_step: bool = False, batch_orders=None, sample_weight=None,
                 class_weight=None, validation_split=0.0):
        check_jax_backend()
        unknown = set(fixes) - set(DIFFERENCE_KEYS)
        if unknown:
            raise ValueError(f"unknown fixes {sorted(unknown)}; known: {list(DIFFERENCE_KEYS)}")
        (x, y, sample_weight), val_data = arrays_like_fit(
            train_data, val_data, sample_weight=sample_weight, class_weight=class_weight,
            validation_split=validation_split)
        if sample_weight is not None and (guide_step or "mean_loss" not in fixes):
            raise NotImplementedError("sample_weight or class_weight needs fit's loss: the "
                                      "'mean_loss' fix, and not the guide's step")
        self.arrays = tuple(a for a in (x, y, sample_weight) if a is not None)
        compat.build_like_fit(model, tuple(a[:batch_size] for a in self.arrays))
        self.model, self.batch_size = model, batch_size
        self.step = (guide_train_step(model, training="dropout" in fixes) if guide_step else
                     jax_train_step(model, dropout="dropout" in fixes,
                                    mean_loss="mean_loss" in fixes))
        self.validate = _validation_step(model)
        self.val_arrays = (None if val_data is None else
                           tuple(np.asarray(a) for a in val_data if a is not None))
        self.orders, self.samples_per_epoch = loop_orders(fixes, len(x), batch_size, seed,
                                                          batch_orders)
        self.steps = math.ceil(self.samples_per_epoch / batch_size)

    def _place(self, batch):
        """`batch` split between the devices as fit splits it under a distribution
        (keras/src/backend/jax/trainer.py: ``_distribute_data``: the distribution's data
        layout, the batch dimension across devices); as it is on one device."""
        distribution = keras.distribution.distribution()
        if distribution is None:
            return batch
        return tuple(keras.distribution.distribute_tensor(a, distribution.get_data_layout(a.shape))
                     for a in batch)

    def _metric_logs(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.model.get_metrics_result().items()}

    def evaluate(self) -> dict[str, float]:
        """One validation pass, as fit runs it after an epoch: the ``val_*`` logs."""
        if self.val_arrays is None:
            return {}
        self.model.reset_metrics()
        state = JaxState.of(self.model)
        for start in range(0, len(self.val_arrays[0]), self.batch_size):
            state = self.validate(state, *self._place(
                tuple(a[start:start + self.batch_size] for a in self.val_arrays)))
        state.assign_to(self.model)
        return {f"val_{name}": value for name, value in self._metric_logs().items()}

    def run_epoch(self, epoch: int, callbacks=None) -> dict[str, float]:
        callbacks = callbacks if callbacks is not None else keras.callbacks.Callback()
        model = self.model
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        state = JaxState.of(model)
        order = self.orders[epoch][:self.samples_per_epoch]
        for batch, start in enumerate(range(0, self.samples_per_epoch, self.batch_size)):
            callbacks.on_train_batch_begin(batch)
            indices = order[start:start + self.batch_size]
            logs, state = self.step(state, *self._place(tuple(a[indices] for a in self.arrays)))
            callbacks.on_train_batch_end(batch, logs)
            if model.stop_training:
                break
        state.assign_to(model)
        epoch_logs = self._metric_logs()
        if self.val_arrays is not None:
            callbacks.on_test_begin()
            val_logs = self.evaluate()
            callbacks.on_test_end({key.removeprefix("val_"): value
                                   for key, value in val_logs.items()})
            epoch_logs.update(val_logs)
        callbacks.on_epoch_end(epoch, epoch_logs)
        return epoch_logs

    def train(self, epochs: int, *, initial_epoch: int = 0, callbacks=None,
              verbose: int = 0) -> dict[str, list]:
        timer = EpochTimer()
        callback_list = keras.callbacks.CallbackList(
            [*(callbacks or ()), timer], add_history=True, add_progbar=verbose != 0,
            verbose=verbose, epochs=epochs, steps=self.steps, model=self.model)
        self.model.stop_training = False
        callback_list.on_train_begin()
        epoch_logs = None
        for epoch in range(initial_epoch, epochs):
            epoch_logs = self.run_epoch(epoch, callback_list)
            if self.model.stop_training:
                break
        if epochs > initial_epoch:
            self.model.optimizer.finalize_variable_values(self.model.trainable_weights)
        callback_list.on_train_end(logs=epoch_logs)
        return {**self.model.history.history, "seconds": timer.seconds}


def train_jax_loop(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
                   callbacks=None, initial_epoch=0, **options):
    """`JaxLoop` built and run for `epochs`, with `helpers.training`'s signature: `options`
    are the trainer's (``fixes``, ``guide_step``, ``batch_orders``, fit's ``sample_weight``,
    ``class_weight``, ``validation_split``). Returns fit's History plus ``seconds``."""
    trainer = JaxLoop(model, train_data, val_data, batch_size=batch_size, seed=seed,
                         **options)
    return trainer.train(epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                         verbose=verbose)


def _variant(label: str, **options):
    def train(model, train_data, val_data, **kwargs):
        return train_jax_loop(model, train_data, val_data, **options, **kwargs)

    train.__name__ = train.__qualname__ = f"train_{label}"
    train.__doc__ = f"`train_jax_loop` with {options or 'all fixes'}."
    return train


train_jax_matched = _variant("jax_matched")
train_jax_naive = _variant("jax_naive", fixes=())
train_guide_loop = _variant("guide_loop", guide_step=True,
                            fixes=("mean_loss", "shuffle", "partial_batch"))
