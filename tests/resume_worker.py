"""Run by tests/test_checkpoints.py in a subprocess: a resumable training run that can be made to
stop mid-epoch so that the test can SIGKILL it.

    python tests/resume_worker.py CHECKPOINT_DIR RESULT.npz [--hang-at EPOCH BATCH MARKER]

Trains `create_cnn(seed=3)` with `train_matched` on 256 MNIST images (validated on 64) for
EPOCHS epochs through `train_resumable`, resuming from CHECKPOINT_DIR when it holds a checkpoint,
and writes the final variables and History to RESULT.npz. With --hang-at it writes MARKER when
batch BATCH of epoch EPOCH is about to run and then waits there, to be killed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers.data import load_mnist  # noqa: E402
from helpers.model import create_cnn  # noqa: E402
from helpers.training import train_matched  # noqa: E402
from helpers.training.checkpoints import train_resumable  # noqa: E402

EPOCHS = 4
BATCH_SIZE = 32
N_TRAIN, N_VAL = 256, 64


class HangAt(keras.callbacks.Callback):
    def __init__(self, epoch: int, batch: int, marker: Path):
        super().__init__()
        self.at, self.marker = (epoch, batch), marker

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.marker.write_text(str(os.getpid()))
            time.sleep(600)  # the test kills the process here


def run(directory: Path, result: Path, hang_at=None) -> None:
    x, y = load_mnist("train", subset=N_TRAIN + N_VAL, seed=0)
    # Always there (the callbacks are part of the checkpoint's settings), waiting only when
    # hang_at = (epoch, batch, marker) is given.
    epoch, batch, marker = hang_at or (-1, -1, "")
    callbacks = [HangAt(int(epoch), int(batch), Path(marker))]
    model = create_cnn(seed=3)
    history = train_resumable(
        train_matched, model, (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:]),
        directory=directory, epochs=EPOCHS, batch_size=BATCH_SIZE, seed=0,
        callbacks=callbacks)
    np.savez(result, history=json.dumps(history),
             **{f"variable_{i}": v.numpy() for i, v in enumerate(model.variables)},
             **{f"optimizer_{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--hang-at", nargs=3, metavar=("EPOCH", "BATCH", "MARKER"))
    args = parser.parse_args()
    run(args.directory, args.result, args.hang_at)


if __name__ == "__main__":
    main()
