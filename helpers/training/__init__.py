"""How to train a compiled Keras classifier: fit, the article's tape loop, the matched loop and
every loop in between (`loop`), fit with its step replaced (`custom_step`), resumable training
(`checkpoints`) and training under ``tf.distribute`` (`distributed`).

The names below are the ones the notebooks and experiments use; see `helpers.training.loop`.
"""

from helpers.differences import DIFFERENCE_KEYS, DIFFERENCES
from helpers.training.loop import (
    ABLATION_METHODS,
    HISTORY_KEYS,
    METHODS,
    TrainStep,
    ablation_variants,
    arrays_like_fit,
    epoch_orders,
    matched_train_step,
    ordered_dataset,
    tape_train_step,
    train_fit,
    train_matched,
    train_naive,
    train_tape_loop,
)

__all__ = [
    "ABLATION_METHODS", "DIFFERENCES", "DIFFERENCE_KEYS", "HISTORY_KEYS", "METHODS", "TrainStep",
    "ablation_variants", "arrays_like_fit", "epoch_orders", "matched_train_step",
    "ordered_dataset", "tape_train_step", "train_fit", "train_matched", "train_naive",
    "train_tape_loop",
]
