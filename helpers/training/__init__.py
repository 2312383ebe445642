"""How to train a compiled Keras classifier: fit and what fit makes of its data (`fit`), fit's
step with the article's differences switchable (`step`), the article's tape loop, the matched
loop and every loop in between, all run by one `Trainer` (`loop`), fit with its step replaced
(`custom_step`), resumable training (`checkpoints`), training under ``tf.distribute``
(`distributed`) and one model trained fold after fold with bounded memory (`reuse`).

The names below are the ones the notebooks and experiments use.
"""

from helpers.differences import DIFFERENCE_KEYS, DIFFERENCES
from helpers.training.fit import (
    EpochOrders,
    arrays_like_fit,
    epoch_orders,
    ordered_dataset,
    train_fit,
)
from helpers.training.loop import (
    ABLATION_METHODS,
    HISTORY_KEYS,
    METHODS,
    Trainer,
    ablation_variants,
    tape_loop_trainer,
    train_matched,
    train_naive,
    train_tape_loop,
)
from helpers.training.reuse import FoldTrainer, start_from
from helpers.training.step import TrainStep, matched_train_step, tape_train_step

__all__ = [
    "ABLATION_METHODS", "DIFFERENCES", "DIFFERENCE_KEYS", "EpochOrders", "FoldTrainer",
    "HISTORY_KEYS", "METHODS", "TrainStep", "Trainer", "ablation_variants", "arrays_like_fit",
    "epoch_orders", "matched_train_step", "ordered_dataset", "start_from", "tape_loop_trainer",
    "tape_train_step", "train_fit", "train_matched", "train_naive", "train_tape_loop",
]
