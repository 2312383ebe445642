"""How to train a compiled Keras classifier: fit and what fit makes of its data (`fit`), fit's
step with the article's differences switchable (`step`), the article's tape loop, the matched
loop and every loop in between, all run by one `Trainer` (`loop`), fit with its step replaced
(`custom_step`), resumable training (`checkpoints`), training under ``tf.distribute``
(`distributed`), one model trained fold after fold with bounded memory (`reuse`) and the
matched loop under Keras' JAX backend (`jax_loop`).

The names below are the ones the notebooks and experiments use. Those of the TensorFlow loops
are loaded when first used, so that importing this package (e.g. for `HISTORY_KEYS`, or fit
under the JAX backend) loads no TensorFlow.
"""

import importlib

from helpers.differences import DIFFERENCE_KEYS, DIFFERENCES
from helpers.training.fit import (
    HISTORY_KEYS,
    EpochOrders,
    arrays_like_fit,
    epoch_orders,
    ordered_dataset,
    train_fit,
)

# name -> the module of this package that defines it (each imports TensorFlow)
_TENSORFLOW_NAMES = {
    **dict.fromkeys(("ABLATION_METHODS", "METHODS", "Trainer", "ablation_variants",
                     "tape_loop_trainer", "train_matched", "train_naive", "train_tape_loop"),
                    "loop"),
    **dict.fromkeys(("TrainStep", "matched_train_step", "tape_train_step"), "step"),
    **dict.fromkeys(("FoldTrainer", "start_from"), "reuse"),
}


def __getattr__(name):
    if name in _TENSORFLOW_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_TENSORFLOW_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ABLATION_METHODS", "DIFFERENCES", "DIFFERENCE_KEYS", "EpochOrders", "FoldTrainer",
    "HISTORY_KEYS", "METHODS", "TrainStep", "Trainer", "ablation_variants", "arrays_like_fit",
    "epoch_orders", "matched_train_step", "ordered_dataset", "start_from", "tape_loop_trainer",
    "tape_train_step", "train_fit", "train_matched", "train_naive", "train_tape_loop",
]
