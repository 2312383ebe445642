"""The held-out test: each method trained once on all training images, tested on the 10,000
MNIST test images that cross-validation never sees.

`train_and_test` builds the article's CNN with ``create_cnn(seed=seed)`` for every method (the same
initial weights), trains it for a fixed number of epochs on the training images (all 60,000, or a
stratified `subset`) and evaluates it on the test images after every epoch, in inference mode, as
fit's ``validation_data``. Nothing is chosen with the test images -- no early stopping, no epoch
picked -- so they stay untouched by every decision; the figure to report is the last epoch's.

With a `results_dir`, each finished method is written at once to ``results_dir/<method>.csv`` and
read back on a rerun, ``settings.json`` records the settings (a folder made with other settings is
refused) and ``run_info.json`` the machine, versions, thread settings and wall time per method.

From the command line (resumable; ``--threads 1`` spares a shared machine)::

    python -m helpers.experiments.heldout results/held-out-test --epochs 30 --batch-size 64
    --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from helpers.data import load_mnist
from helpers.experiments.cv import (
    _check_or_write_settings,
    _write_atomically,
    data_fingerprint,
    run_info,
)
from helpers.model import create_cnn
from helpers.training import HISTORY_KEYS, METHODS

TEST_KEYS = ("loss", "accuracy", "test_loss", "test_accuracy")
COLUMNS = ["method", "epoch", *TEST_KEYS, "seconds"]


def _history_table(history: Mapping[str, list], method: str) -> pd.DataFrame:
    table = pd.DataFrame({key: history[key] for key in (*HISTORY_KEYS, "seconds")})
    table = table.rename(columns={"val_loss": "test_loss", "val_accuracy": "test_accuracy"})
    table.insert(0, "epoch", range(1, len(table) + 1))
    table.insert(0, "method", method)
    return table[COLUMNS]


def _thread_settings() -> dict:
    import tensorflow as tf

    return {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


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
    results_path = Path(results_dir) if results_dir is not None else None
    info = {}
    if results_path is not None:
        _check_or_write_settings(results_path, {
            "dataset": "mnist", "train": "train", "test": "test", "subset": subset,
            "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "model": getattr(model_fn, "__name__", str(model_fn)),
            "samples": len(x_train), "test_samples": len(x_test),
            "data_sha256": data_fingerprint(x_train, y_train),
        })
        info_path = results_path / "run_info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
    tables = []
    for method, train in methods.items():
        method_file = results_path / f"{method}.csv" if results_path else None
        if method_file is not None and method_file.exists():
            tables.append(pd.read_csv(method_file, float_precision="round_trip"))  # exact floats
            if verbose:
                print(f"{method}: finished earlier, read {method_file}")
            continue
        if verbose:
            print(f"{method}: training {epochs} epochs on {len(x_train)} images, "
                  f"testing on {len(x_test)}", flush=True)
        model = model_fn(seed=seed)
        started = time.perf_counter()
        history = train(model, (x_train, y_train), (x_test, y_test), epochs=epochs,
                        batch_size=batch_size, seed=seed, verbose=0)
        seconds = time.perf_counter() - started
        table = _history_table(history, method)
        if verbose:
            last = table.iloc[-1]
            print(f"    done in {seconds:.0f} s: test loss {last.test_loss:.4f}, "
                  f"test accuracy {last.test_accuracy:.4f}", flush=True)
        if method_file is not None:
            _write_atomically(method_file, table.to_csv(index=False))
            info = {**run_info(), **_thread_settings(),
                    "wall_seconds": {**info.get("wall_seconds", {}), method: round(seconds, 1)}}
            _write_atomically(results_path / "run_info.json",
                              json.dumps(info, indent=2, sort_keys=True) + "\n")
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def final_test_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Each method's last epoch: the held-out test loss and accuracy to report."""
    last = table[table["epoch"] == table.groupby("method")["epoch"].transform("max")]
    return last.set_index("method")[["epoch", *TEST_KEYS]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--subset", type=int, default=0, help="0: all 60,000 training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra- and inter-op threads (0: TensorFlow's default)")
    args = parser.parse_args(argv)
    if args.threads:
        import tensorflow as tf

        # Must precede TensorFlow's first op: the thread pools are made once.
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    table = train_and_test(args.methods, epochs=args.epochs, batch_size=args.batch_size,
                           subset=args.subset, seed=args.seed, results_dir=args.results_dir)
    scores = final_test_scores(table)
    scores.to_csv(Path(args.results_dir) / "test_scores.csv")
    print(scores.to_string(float_format="%.4f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
