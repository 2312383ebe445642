"""The four ways the article's loop trains differently from fit: the project's canonical list.

The README and the notebooks read their count and names from `DIFFERENCES`; each `key` is a switch
of `helpers.training.train_tape_loop(fixes=...)`. Plain data, no TensorFlow: analysis code imports
it without loading a framework.
"""

from __future__ import annotations

from typing import NamedTuple


class Difference(NamedTuple):
    """One way the article's loop trains differently from fit."""

    key: str  # the switch's name in `train_tape_loop(fixes=...)`
    name: str  # a short label for tables and figures
    fit: str  # what fit does
    article: str  # what the article's loop does instead


# The canonical list: the README and notebooks 02–04 read their count and names from it.
DIFFERENCES = (
    Difference("dropout", "Dropout in training",
               "calls the model with training=True, so Dropout drops half the units of each "
               "training batch",
               "calls model(x) with training unset, so Dropout never drops anything"),
    Difference("mean_loss", "the mean loss",
               "differentiates the batch-mean loss (plus model.losses)",
               "differentiates the per-sample loss vector, i.e. the sum over the batch: a "
               "batch_size-times larger gradient"),
    # Named for what the fix does, not "a new shuffle every epoch": under a global seed, as in
    # this project, fit's shuffle repeats one permutation every epoch (notebook 03 shows it).
    Difference("shuffle", "shuffled batches",
               "shuffles the training samples into batches (under a global seed one permutation, "
               "repeated every epoch; the matched loop draws a new one every epoch)",
               "takes the batches in file order, the same every epoch"),
    Difference("partial_batch", "the last partial batch",
               "trains on every sample every epoch, the last partial batch included",
               "drops the last len(x) % batch_size samples every epoch"),
)
DIFFERENCE_KEYS = tuple(difference.key for difference in DIFFERENCES)
