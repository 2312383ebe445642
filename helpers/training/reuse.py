"""Training many models in one process with bounded memory: one model and one traced training
function per method, trained again for every fold of cross-validation.

Every new model trained with a new traced step keeps 5-8 MiB for good (results/memory-per-model:
Keras' TensorFlow optimizer traces ``all_reduce`` through ``tf.custom_gradient``, whose closure
TensorFlow's global gradient registry never lets go, and with it the step's graph);
``keras.backend.clear_session()`` does not free it. So `FoldTrainer` keeps one model and its
traced functions, and starts every fold from the state a fresh model would start from
(`start_from`): the fresh model's weights and Dropout seed-generator state, an unused optimizer
and reset metrics. Built just before, as before, the fresh model also leaves the global random
state (Python, NumPy, TensorFlow, Keras) as it was, so each fold trains bit for bit as a fresh
model (tests/test_reuse.py).
"""

from __future__ import annotations

import gc

import keras

from helpers.differences import DIFFERENCE_KEYS
from helpers.training.fit import train_fit
from helpers.training.loop import ablation_variants, tape_loop_trainer

# the fixes of each tape loop in helpers.training.METHODS; fit has none
TAPE_LOOP_FIXES = {"naive": (), "matched": DIFFERENCE_KEYS, **ablation_variants()}


def _copy_values(into, values_of, what: str) -> None:
    into, values_of = list(into), list(values_of)
    shapes = [(tuple(v.shape), v.dtype) for v in into]
    if shapes != [(tuple(v.shape), v.dtype) for v in values_of]:
        raise ValueError(f"the reused model's {what} differ in number, shape or dtype from the "
                         "fresh model's: is it the same architecture and optimizer?")
    for variable, value in zip(into, values_of):
        variable.assign(value)


def start_from(model: keras.Model, fresh: keras.Model) -> None:
    """Give `model` the state the compiled model `fresh` (same architecture and compile call)
    starts training with: its variables (weights and Dropout seed-generator states), its
    optimizer's variables as built and never used (zero slots and iteration count, the compiled
    learning rate; `fresh`'s optimizer is built for that) and reset metrics. fit resets the
    metrics again at every epoch (keras/src/backend/tensorflow/trainer.py:
    ``TensorFlowTrainer.fit``), so does `helpers.training.Trainer`."""
    _copy_values(model.variables, fresh.variables, "variables")
    if not fresh.optimizer.built:
        fresh.optimizer.build(fresh.trainable_variables)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    _copy_values(model.optimizer.variables, fresh.optimizer.variables, "optimizer variables")
    model.reset_metrics()


class FoldTrainer:
    """A training function with `helpers.training`'s signature for one method of
    ``helpers.training.METHODS`` that trains ONE model, with one traced step, fold after fold::

        train = FoldTrainer("matched")
        history = train(create_cnn(seed=fold), train_data, val_data, epochs=..., batch_size=...,
                        seed=fold)

    The first call trains the model it is given and keeps it (``self.model``); every later call
    reads only the starting state of the model it is given (`start_from`) and trains the kept
    model from it, so the model passed in stays untrained: the History returned and
    ``self.model`` hold the result. fit reuses what ``model.fit`` caches on the model
    (``train_function``, ``test_function``: keras/src/backend/tensorflow/trainer.py:
    ``TensorFlowTrainer.make_train_function``); a tape loop reuses its `Trainer`'s traced
    functions (`tape_loop_trainer`'s ``reuse``), which take the fold's data as arguments.
    The data must keep its shapes (but the number of samples) and dtypes from fold to fold, and
    `batch_size` its value; a change is refused, not traced again. `callbacks`: Keras callbacks,
    as for fit.
    """

    def __init__(self, method: str, *, steps_per_execution: int = 1):
        if method != "fit" and method not in TAPE_LOOP_FIXES:
            raise ValueError(f"unknown method {method!r}; known: fit, "
                             + ", ".join(TAPE_LOOP_FIXES))
        if method == "fit" and steps_per_execution != 1:
            raise ValueError("fit's steps_per_execution is a compile option: compile the model "
                             "with it")
        self.method, self.steps_per_execution = method, steps_per_execution
        self.model: keras.Model | None = None
        self.trainer = None  # a tape loop's Trainer, its traced functions reused

    def __call__(self, model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
                 callbacks=None):
        if self.model is None:
            self.model = model
        else:
            start_from(self.model, model)
        # The earlier folds' fresh models and fit's datasets are reference cycles holding
        # graphs in native memory, which Python's object-count thresholds would free late.
        gc.collect()
        if self.method == "fit":
            return train_fit(self.model, train_data, val_data, epochs=epochs,
                             batch_size=batch_size, seed=seed, verbose=verbose,
                             callbacks=callbacks)
        fixes = TAPE_LOOP_FIXES[self.method]
        self.trainer = tape_loop_trainer(
            self.model, train_data, val_data, batch_size=batch_size, seed=seed, fixes=fixes,
            steps_per_execution=self.steps_per_execution, reuse=self.trainer)
        history = self.trainer.train(epochs, callbacks=callbacks, verbose=verbose)
        if "mean_loss" in fixes:  # after the last epoch, as train_tape_loop and fit do
            self.model.optimizer.finalize_variable_values(self.model.trainable_weights)
        return history
