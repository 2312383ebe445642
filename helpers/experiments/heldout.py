"""The held-out test: each method trained once on all training images, tested on the 10,000
MNIST test images that cross-validation never sees.

`train_and_test` builds the article's CNN with ``create_cnn(seed=seed)`` for every method (the same
initial weights), trains it for a fixed number of epochs on the training images (all 60,000, or a
stratified `subset`) and evaluates it on the test images after every epoch, in inference mode, as
fit's ``validation_data``. Nothing is chosen with the test images -- no early stopping, no epoch
picked -- so they stay untouched by every decision; the figure to report is the last epoch's.

With a `results_dir` (a `helpers.experiments.store.ResultsFolder`), each finished method is
written at once to ``results_dir/<method>.csv`` and read back on a rerun, ``settings.json`` records
the settings (a folder made with other settings is refused) and ``run_info.json`` the machine,
versions, thread settings and wall time per method. The command line is
`helpers.tooling.run_heldout`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import pandas as pd

from helpers.data import load_mnist
from helpers.experiments import store
from helpers.experiments.cv import data_fingerprint
from helpers.model import create_cnn
from helpers.training import HISTORY_KEYS, METHODS

TEST_KEYS = ("loss", "accuracy", "test_loss", "test_accuracy")
COLUMNS = ["method", "epoch", *TEST_KEYS, "seconds"]


def train_and_test(
    methods: Mapping[str, Callable] | list[str],
    *,
    epochs: int,
    batch_size: int,
    subset: int | None = None,
    seed: int = 0,
    model_fn: Callable = create_cnn,
    results_dir: str | os.PathLike | None = None,
    verbose: int = 1,
) -> pd.DataFrame:
    """Train every method once on the training images and test it on the test images; return a
    row per method x epoch with ``loss``, ``accuracy`` (training, History's running means),
    ``test_loss``, ``test_accuracy`` and ``seconds``. 0 (or None) for `subset` means all."""
    if not isinstance(methods, Mapping):
        unknown = [name for name in methods if name not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
        methods = {name: METHODS[name] for name in methods}
    subset = subset or None
    x_train, y_train = load_mnist("train", subset=subset, seed=seed)
    x_test, y_test = load_mnist("test")
    results = None
    if results_dir is not None:
        results = store.ResultsFolder.open(results_dir, {
            "dataset": "mnist", "train": "train", "test": "test", "subset": subset,
            "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "model": getattr(model_fn, "__name__", str(model_fn)),
            "samples": len(x_train), "test_samples": len(x_test),
            "data_sha256": data_fingerprint(x_train, y_train),
        })
    tables = []
    for method, train in methods.items():
        method_file = f"{method}.csv"
        finished = store.read_finished(results, method_file, method, verbose)
        if finished is not None:
            tables.append(finished)
            continue
        if verbose:
            print(f"{method}: training {epochs} epochs on {len(x_train)} images, "
                  f"testing on {len(x_test)}", flush=True)
        model = model_fn(seed=seed)
        started = time.perf_counter()
        history = train(model, (x_train, y_train), (x_test, y_test), epochs=epochs,
                        batch_size=batch_size, seed=seed, verbose=0)
        seconds = time.perf_counter() - started
        table = (store.history_table(history, (*HISTORY_KEYS, "seconds"), method=method)
                 .rename(columns={"val_loss": "test_loss", "val_accuracy": "test_accuracy"}))
        if verbose:
            last = table.iloc[-1]
            print(f"    done in {seconds:.0f} s: test loss {last.test_loss:.4f}, "
                  f"test accuracy {last.test_accuracy:.4f}", flush=True)
        if results is not None:
            results.write_table(method_file, table)
            wall_seconds = results.recorded_run_info().get("wall_seconds", {})
            results.record_run_info(wall_seconds={**wall_seconds, method: round(seconds, 1)})
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def final_test_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Each method's last epoch: the held-out test loss and accuracy to report."""
    last = table[table["epoch"] == table.groupby("method")["epoch"].transform("max")]
    return last.set_index("method")[["epoch", *TEST_KEYS]]
