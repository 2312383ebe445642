"""Interchangeable ways to train a compiled Keras classifier: fit, the article's tape loop, a
tape loop that is fit, and every loop in between -- all of them run by one `Trainer`.

Every training function has the same signature, so cross-validation, notebooks and tests can swap
them::

    history = train(model, (x_train, y_train), (x_val, y_val),
                    epochs=..., batch_size=..., seed=..., verbose=0)

and returns a History-like dict of per-epoch lists under fit's keys -- for the article's compile
call ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` (`HISTORY_KEYS`), else one per
compiled metric -- plus ``seconds`` (wall time of each epoch, validation included). The model must
be compiled: the optimizer, loss and metrics given to `compile` are the ones used. `train_fit` and
`train_matched` also take fit's ``sample_weight``, ``class_weight`` and ``validation_split``
(appendix A1 lists every fit option and the test that shows the loop reproduces it). Each also
takes fit's ``callbacks=`` and ``initial_epoch=``: the tape loops drive Keras callbacks through
``keras.callbacks.CallbackList`` as fit does (`Trainer`), and the History then also holds
whatever the callbacks log (e.g. ``learning_rate``).

- `train_fit`: ``model.fit`` (helpers.training.fit).
- `train_tape_loop`: a GradientTape loop with each of `DIFFERENCES` -- the four ways the article's
  loop trains differently from fit -- switchable (``fixes=``); `tape_loop_trainer` builds the
  same loop as a `Trainer` without running it, to train it epoch by epoch or inspect its
  compiled function.
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

Where each behaviour of fit lives, Keras 3.15.1 source, TensorFlow backend (the step's in
helpers.training.step):
- shuffling: one ``tf.random.shuffle`` of all indices per iterator,
  keras/src/trainers/data_adapters/array_data_adapter.py: ``ArrayDataAdapter.get_tf_dataset``
  (its ``permutation``); the last partial batch is kept.
- iterators: a new one at each epoch's start, and one more made and thrown away at each epoch's
  end, keras/src/trainers/epoch_iterator.py: ``EpochIterator._enumerate_iterator``.
- the epoch loop, its callbacks and validation: keras/src/backend/tensorflow/trainer.py:
  ``TensorFlowTrainer.fit``; EMA: ``finalize_variable_values`` after the last epoch, at the end
  of the same method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from helpers.differences import DIFFERENCE_KEYS
from helpers.training.fit import (
    EpochTimer,
    arrays_like_fit,
    check_orders,
    loop_orders,
    train_fit,
)
from helpers.training.step import (
    Evaluator,
    TrainStep,
    check_reproducible,
    indexed_signature,
    indexed_train_step,
    metric_logs,
    tape_train_step,
)


class Trainer:
    """fit's epoch loop around one training function, built -- and, compiled, traced -- once.

    `step` is the training step and the History metrics it updates; ``batches(epoch)`` yields
    the arguments of each call of ``step.step`` in epoch `epoch` (one batch per call, or
    `steps_per_call` batches); `steps` is the number of batches an epoch; `evaluate`, if given,
    is called after every epoch and returns the ``val_*`` logs (an `Evaluator`). With `compiled`,
    ``train_function`` is ``tf.function(step.step, input_signature=..., jit_compile=...)``, made
    here and reused by every epoch and every call of `train`; else the step itself, eager. Given
    `train_function` (an earlier trainer's, made from this same `step`), that one is used and
    nothing is traced again. `traced_for` records what the function was made for
    (`tape_loop_trainer` refuses to reuse it for anything else).

    - ``run_epoch(epoch)``: one epoch of training and its validation; returns the epoch's logs;
    - ``evaluate()``: one validation pass; its ``val_*`` logs (none without `evaluate`);
    - ``train(epochs, initial_epoch=0, callbacks=None, verbose=0)``: fit's loop over the epochs,
      with fit's callbacks; returns the History.
    """

    def __init__(self, model: keras.Model, step: TrainStep,
                 batches: Callable[[int], Iterable[tuple]], *, steps: int,
                 steps_per_call: int = 1, evaluate: Callable[[], dict] | None = None,
                 compiled: bool = True, input_signature=None, jit_compile: bool = False,
                 train_function: Callable | None = None, traced_for: dict | None = None):
        self.model, self.step, self.metrics = model, step, step.metrics
        self.batches, self.steps, self.steps_per_call = batches, steps, steps_per_call
        self.evaluator = evaluate
        self.traced_for = traced_for
        if train_function is not None:
            self.train_function = train_function
        elif compiled:
            self.train_function = tf.function(step.step, input_signature=input_signature,
                                              jit_compile=jit_compile)
        else:
            self.train_function = step.step
        self.callbacks: keras.callbacks.CallbackList | None = None  # set while `train` runs

    @classmethod
    def over_indices(cls, model: keras.Model, step: TrainStep, arrays, *, batch_size: int,
                     orders, samples_per_epoch: int, steps_per_call: int = 1,
                     reuse: Trainer | None = None, **options) -> Trainer:
        """A trainer whose function takes index vectors and the arrays they index, and gathers
        its batches inside (`helpers.training.step.indexed_train_step`), so that one trace serves
        every call, the partial batch's too. `arrays` holds all samples (``(x, y)`` or ``(x, y,
        sample_weight)``, tensors); epoch e trains the first `samples_per_epoch` indices of
        ``orders[e]``, `steps_per_call` batches of `batch_size` a call. `reuse`: an earlier
        trainer made here for the same model, `step`, `batch_size` and `steps_per_call`, whose
        traced function then trains these arrays (of the same shapes and dtypes) without a new
        trace; `step` is not used then. `options`: the constructor's."""
        indices_per_call = steps_per_call * batch_size

        def batches(epoch):  # this epoch's order, partial batch (if kept) last
            order = tf.constant(orders[epoch][:samples_per_epoch], dtype=tf.int64)
            for start in range(0, samples_per_epoch, indices_per_call):
                yield (order[start:start + indices_per_call], *arrays)

        if reuse is None:
            step, train_function = indexed_train_step(step, batch_size, steps_per_call), None
        else:
            step, train_function = reuse.step, reuse.train_function
        return cls(model, step, batches, steps=math.ceil(samples_per_epoch / batch_size),
                   steps_per_call=steps_per_call, input_signature=indexed_signature(arrays),
                   train_function=train_function, **options)

    def evaluate(self) -> dict[str, float]:
        """One validation pass, as fit runs it after an epoch: the ``val_*`` logs."""
        return {} if self.evaluator is None else self.evaluator()

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Epoch `epoch`, as fit runs it (keras/src/backend/tensorflow/trainer.py:
        ``TensorFlowTrainer.fit``): the metrics reset; ``on_epoch_begin``; for every call of the
        training function (one batch, or a group of `steps_per_call`)
        ``on_train_batch_begin(first)`` / ``on_train_batch_end(last, logs)`` with fit's step
        numbers (keras/src/trainers/epoch_iterator.py: ``EpochIterator._enumerate_iterator``),
        the epoch stopped early when a callback sets ``model.stop_training``; validation
        between ``on_test_begin`` and ``on_test_end`` (fit runs it through
        ``evaluate(callbacks=...)``; the per-batch ``on_test_batch_*`` hooks are not called);
        ``on_epoch_end(epoch, logs)`` with the training logs plus ``val_*``. Returns those logs.

        The callbacks are those of the `train` call under way; outside one there are none, and
        no per-batch logs are made (the throughput benchmark times epochs this way)."""
        reading = self.callbacks is not None
        callbacks = self.callbacks if reading else keras.callbacks.Callback()  # hooks: no-ops
        for metric in self.metrics:
            metric.reset_state()
        callbacks.on_epoch_begin(epoch)
        for call, batch in enumerate(self.batches(epoch)):
            first_step = call * self.steps_per_call
            callbacks.on_train_batch_begin(first_step)
            self.train_function(*batch)
            # tensors, as fit passes them: CallbackList converts them to floats, in a
            # background thread when no callback reads them per batch (callback_list.py)
            callbacks.on_train_batch_end(
                first_step + self.steps_per_call - 1,
                dict(sorted(metric_logs(self.metrics, as_float=False).items())) if reading
                else None)
            if self.model.stop_training:
                break
        epoch_logs = metric_logs(self.metrics)
        callbacks.on_test_begin()
        val_logs = self.evaluate()
        callbacks.on_test_end({key.removeprefix("val_"): value
                               for key, value in val_logs.items()})
        # sorted by name, as fit's logs are (keras/src/utils/python_utils.py: pythonify_logs),
        # so the progress bar and History list the metrics in fit's order
        epoch_logs = dict(sorted({**epoch_logs, **val_logs}.items()))
        callbacks.on_epoch_end(epoch, epoch_logs)
        return epoch_logs

    def train(self, epochs: int, *, initial_epoch: int = 0, callbacks=None,
              verbose: int = 0) -> dict[str, list]:
        """Epochs `initial_epoch` to `epochs` (fit's meaning, for resuming), each by
        `run_epoch`, driving Keras' own ``CallbackList`` with fit's hooks, logs and order:
        ``on_train_begin``; the epochs, stopping after one if ``model.stop_training``;
        ``on_train_end``. Keras' ``History`` and ``ProgbarLogger`` are added as fit adds them
        (``add_history=True``, ``add_progbar=verbose != 0``), so the progress bar is fit's.
        Returns ``History.history`` (every key the callbacks logged, e.g. ``learning_rate``
        from ReduceLROnPlateau) plus ``seconds``."""
        timer = EpochTimer()
        self.callbacks = keras.callbacks.CallbackList(
            [*(callbacks or ()), timer], add_history=True, add_progbar=verbose != 0,
            verbose=verbose, epochs=epochs, steps=self.steps, model=self.model,
        )
        try:
            self.model.stop_training = False
            self.callbacks.on_train_begin()
            training_logs = None
            for epoch in range(initial_epoch, epochs):
                training_logs = self.run_epoch(epoch)
                if self.model.stop_training:
                    break
            self.callbacks.on_train_end(logs=training_logs)
        finally:
            self.callbacks = None
        return {**self.model.history.history, "seconds": timer.seconds}


def tape_loop_trainer(model, train_data, val_data, *, batch_size, seed, fixes=DIFFERENCE_KEYS,
                      batch_orders=None, compiled=True, jit_compile=False,
                      steps_per_execution=1, sample_weight=None, class_weight=None,
                      validation_split=0.0, make_step=None, reuse=None) -> Trainer:
    """The loop `train_tape_loop` runs, built but not run: a `Trainer` whose step, data and
    validation are those of these arguments (see `train_tape_loop`; the default `fixes` are all
    of them: `train_matched`'s loop), for any number of epochs (``trainer.train(epochs)``; epoch
    e trains on ``batch_orders[e]``, or on ``epoch_orders(N, epochs, seed)[e]``). Its
    ``train_function`` is the one ``tf.function`` every epoch calls, e.g. to count its traces;
    `jit_compile` compiles it with XLA.

    `reuse`: a trainer this function made earlier for the same model and the same options
    (fixes, batch size, steps_per_execution, sample weights or none, compiled, jit_compile,
    make_step); its traced training and validation functions then serve this data, of the same
    shapes and dtypes, without tracing again, and its evaluator validates on `val_data` from
    now on. Anything else is refused with a ValueError. Cross-validation trains every fold so
    (helpers.training.reuse); a new trace per fold would keep its graph for good (results/
    memory-per-model)."""
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
    orders, samples_per_epoch = loop_orders(fixes, len(x), batch_size, seed, batch_orders)
    if make_step is not None and sample_weight is not None:
        raise NotImplementedError("make_step does not take sample weights (sample_weight, "
                                  "class_weight)")
    traced_for = {"model": model, "fixes": tuple(fixes), "batch_size": batch_size,
                  "steps_per_execution": steps_per_execution,
                  "sample_weight": sample_weight is not None, "compiled": compiled,
                  "jit_compile": jit_compile, "make_step": make_step}
    if reuse is None:
        step = (make_step(model, x, y) if make_step is not None else
                tape_train_step(model, x, y, dropout="dropout" in fixes,
                                mean_loss="mean_loss" in fixes, sample_weight=sample_weight))
        evaluate = None if val_data is None else Evaluator(model, val_data, batch_size, compiled)
    else:
        _check_reusable(reuse, traced_for)
        step, evaluate = None, reuse.evaluator
        if val_data is None:
            evaluate = None  # no validation: no val_* logs, as in fit
        elif evaluate is None:
            evaluate = Evaluator(model, val_data, batch_size, compiled)
        else:
            evaluate.validate_on(val_data)
    return Trainer.over_indices(
        model, step, tuple(tf.convert_to_tensor(a) for a in (x, y, sample_weight)
                           if a is not None),
        batch_size=batch_size, orders=orders, samples_per_epoch=samples_per_epoch,
        steps_per_call=steps_per_execution, compiled=compiled, jit_compile=jit_compile,
        evaluate=evaluate, reuse=reuse, traced_for=traced_for)


def _check_reusable(reuse: Trainer, traced_for: dict) -> None:
    """Refuse, naming them, the options in which `reuse` was traced for something else."""
    earlier = reuse.traced_for or {}
    differing = [key for key, value in traced_for.items()
                 if key not in earlier or earlier[key] != value]
    if differing:
        raise ValueError("reuse= takes a trainer tape_loop_trainer made for the same model and "
                         f"options; this one differs in: {', '.join(differing)}")


def train_tape_loop(model, train_data, val_data, *, epochs, batch_size, seed, fixes,
                    verbose=0, batch_orders=None, compiled=True, steps_per_execution=1,
                    sample_weight=None, class_weight=None, validation_split=0.0,
                    callbacks=None, initial_epoch=0, make_step=None):
    """The article's GradientTape loop with the `DIFFERENCES` named in `fixes` done as fit does
    them: no fixes is `train_naive`, all of them `train_matched`, and anything between is one
    of the ablation's variants (notebook 04).

    - ``"dropout"``, ``"mean_loss"``: the step's switches (`tape_train_step`);
    - ``"shuffle"``: a new permutation of all samples every epoch (from `seed`, or exactly
      `batch_orders`, shape (epochs, N)); without it, file order every epoch;
    - ``"partial_batch"``: ``ceil(N / batch_size)`` steps, the last partial batch kept; without it
      ``N // batch_size`` steps, and the last ``N % batch_size`` samples of the epoch's order are
      not trained on.

    What every variant shares with fit: History-style metrics (running per-sample means, reset
    each epoch) and validation in inference mode after every epoch. One ``tf.function`` step,
    traced once: the batch is gathered inside it from index tensors of unknown length, so the last
    partial batch does not retrace. `compiled=False` runs the same step eagerly. The loop is a
    `Trainer` (`tape_loop_trainer` builds it without running it).

    `steps_per_execution` > 1 is fit's option of the same name (``compile(steps_per_execution=
    ...)``): each call of the compiled function trains that many batches in a graph loop, so
    Python and the function call are paid once per group instead of once per batch (notebook
    05_speed shows what that saves). The batches, their order and the arithmetic are the same,
    and so are History and weights (tests/test_training.py); the progress bar moves once per
    group.

    fit's other options, with fit's semantics (tests/test_fit_options.py, appendix A1):
    `sample_weight`, `class_weight` and `validation_split` as `arrays_like_fit` prepares them
    (N is then the number of training samples after the split); `val_data` may be None or
    ``(x, y, sample_weight)``; whatever compile() set up -- metrics, loss weights, loss scaling,
    clipping, accumulation, schedules, EMA, constraints -- through the model and its optimizer
    (`tape_train_step`). Options a variant cannot reproduce raise `NotImplementedError`
    (`check_reproducible`). As fit does after its last epoch (``TensorFlowTrainer.fit``),
    ``finalize_variable_values`` then gives an EMA optimizer's averages to the weights.

    `callbacks` and `initial_epoch` mean what they mean to fit: Keras callbacks, driven by
    `Trainer.train` through ``keras.callbacks.CallbackList`` with fit's hooks and logs
    (tests/test_callbacks.py), and the epoch to start at when resuming (epoch e still trains on
    ``batch_orders[e]``; helpers.training.checkpoints).

    `make_step`, ``make_step(model, x, y) -> TrainStep``, replaces the step (e.g.
    `helpers.training.custom_step.layer_clipped`); it then decides how the model is called and what
    is differentiated, so it needs the ``"dropout"`` and ``"mean_loss"`` fixes on, and no sample
    weights (it is refused otherwise rather than silently ignoring them).
    """
    if batch_orders is not None:  # one order per epoch (tape_loop_trainer checks the samples)
        check_orders(batch_orders, np.shape(batch_orders)[-1], epochs)
    trainer = tape_loop_trainer(
        model, train_data, val_data, batch_size=batch_size, seed=seed, fixes=fixes,
        batch_orders=batch_orders, compiled=compiled, steps_per_execution=steps_per_execution,
        sample_weight=sample_weight, class_weight=class_weight,
        validation_split=validation_split, make_step=make_step)
    history = trainer.train(epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                            verbose=verbose)
    if "mean_loss" in fixes:  # else check_reproducible refused use_ema
        model.optimizer.finalize_variable_values(model.trainable_weights)
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
    """A GradientTape loop that does what fit does (see helpers.training.step for where):
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
    return train_tape_loop(
        model, train_data, val_data, epochs=epochs, batch_size=batch_size, seed=seed,
        fixes=DIFFERENCE_KEYS, verbose=verbose, batch_orders=batch_orders, compiled=compiled,
        steps_per_execution=steps_per_execution, sample_weight=sample_weight,
        class_weight=class_weight, validation_split=validation_split, callbacks=callbacks,
        initial_epoch=initial_epoch, make_step=make_step)


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
