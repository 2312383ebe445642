"""Stratified k-fold cross-validation of several training methods, saved fold by fold.

`cross_validate` splits with scikit-learn's StratifiedKFold (shuffled, seeded), so every method
sees the same folds; fold f's model is built with ``model_fn(seed=seed + f)`` for every method, so
every method starts fold f from the same initial weights. Methods given by name train one model
each, fold after fold (`helpers.training.FoldTrainer`: each fold starts from fold f's fresh
model's state, bit for bit as that model would train), so memory stays bounded however many
folds run in one process. It returns one tidy table, a row per method x fold x epoch.

With a `results_dir` (a `helpers.experiments.store.ResultsFolder`), each finished (method, fold)
is written at once to ``results_dir/<method>/fold_<f>.csv``; a rerun of an interrupted run reads
the finished folds instead of training them again. ``results_dir/settings.json`` records what the
results were made with: a folder made with other settings is refused, never mixed in, and so is a
non-empty folder without it (one the project did not make).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.data import class_ids, load_mnist
from helpers.experiments import store
from helpers.model import create_cnn
from helpers.training import HISTORY_KEYS

COLUMNS = ["method", "fold", "epoch", *HISTORY_KEYS, "seconds"]


def fold_indices(y, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs from StratifiedKFold(folds, shuffle=True, seed)."""
    from sklearn.model_selection import StratifiedKFold

    labels = class_ids(y)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def data_fingerprint(x, y) -> str:
    digest = hashlib.sha256()
    for array in (x, y):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def results_dir_for(base: str | os.PathLike, **settings) -> Path:
    """A results folder named after the settings, so runs with other settings go elsewhere."""
    name = "-".join(f"{key}{value}" for key, value in settings.items())
    return Path(base) / name


def history_table(history: Mapping[str, list], method: str, fold: int) -> pd.DataFrame:
    """One fold's History as rows of `COLUMNS`, one per epoch."""
    return store.history_table(history, (*HISTORY_KEYS, "seconds"), method=method, fold=fold)


def cross_validate(
    methods: Mapping[str, Callable] | list[str],
    x: np.ndarray,
    y: np.ndarray,
    *,
    folds: int,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    model_fn: Callable = create_cnn,
    results_dir: str | os.PathLike | None = None,
    settings: Mapping | None = None,
    verbose: int = 1,
    first_folds: int | None = None,
    run_details: Mapping | None = None,
) -> pd.DataFrame:
    """Train every method on every fold; return a row per method x fold x epoch.

    `methods` maps names to training functions with the `helpers.training` signature (e.g.
    `helpers.training.FoldTrainer`s), or lists names from `helpers.training.METHODS`, each then
    trained by a `FoldTrainer`. `settings` adds descriptions of the data (dataset,
    subset, ...) to what `results_dir/settings.json` records and checks. `verbose`: 0 silent,
    1 one line per fold and method trained (its last epoch's History values, in `HISTORY_KEYS`
    order) and one line for all the folds read back,
    2 also Keras-style progress bars. `first_folds`: train (or read back) only the first this many
    of the `folds` folds -- the same folds as a full run, fewer of them. `run_details` (with a
    `results_dir`): recorded in its run_info.json, with the machine, versions and thread settings,
    as soon as the folder is accepted -- before any training.
    """
    if not isinstance(methods, Mapping):
        # here: a mapping of JAX loops loads no TensorFlow
        from helpers.training import METHODS, FoldTrainer

        unknown = [name for name in methods if name not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
        methods = {name: FoldTrainer(name) for name in methods}
    splits = fold_indices(y, folds, seed)
    results = None
    if results_dir is not None:
        results = store.ResultsFolder.open(results_dir, {
            **dict(settings or {}),
            "folds": folds, "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "model": getattr(model_fn, "__name__", str(model_fn)),
            "samples": len(x), "data_sha256": data_fingerprint(x, y),
        })
        if run_details is not None:
            results.record_run_info(**run_details)
    tables = []
    read_back = []  # (method, fold) runs an earlier run finished: one line for all of them
    # Fold-major order: after any number of finished folds, every method has the same folds, so
    # a partial run can already be compared pairwise.
    for fold, (train_idx, val_idx) in enumerate(splits[:first_folds]):
        for method, train in methods.items():
            fold_file = f"{method}/fold_{fold:02d}.csv"
            finished = store.read_finished(results, fold_file, "", verbose=0)
            if finished is not None:
                tables.append(finished)
                read_back.append(method)
                continue
            model = model_fn(seed=seed + fold)
            started = time.perf_counter()
            history = train(
                model, (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]),
                epochs=epochs, batch_size=batch_size, seed=seed + fold,
                verbose=1 if verbose >= 2 else 0,  # progress bars only when asked for
            )
            table = history_table(history, method, fold)
            if verbose:
                last = table.iloc[-1]
                print(f"fold {fold + 1}/{folds} {method}: {epochs} epochs on {len(train_idx)} "
                      f"images in {time.perf_counter() - started:.0f} s; last epoch: "
                      + ", ".join(f"{key} {last[key]:.4f}" for key in HISTORY_KEYS), flush=True)
            if results is not None:
                results.write_table(fold_file, table)
            tables.append(table)
    if read_back and verbose:
        counts = ", ".join(f"{read_back.count(name)} of {name}"
                           for name in dict.fromkeys(read_back))
        print(f"read back {counts} (folds an earlier run finished) from {results.path}")
    combined = pd.concat(tables, ignore_index=True)
    order = {name: i for i, name in enumerate(methods)}
    return combined.sort_values(
        ["method", "fold", "epoch"], key=lambda col: col.map(order) if col.name == "method" else col
    ).reset_index(drop=True)


def cross_validate_mnist(
    methods: Mapping[str, Callable] | list[str],
    *,
    folds: int,
    epochs: int,
    batch_size: int,
    subset: int | None = None,
    seed: int = 0,
    results_dir: str | os.PathLike | None = None,
    verbose: int = 1,
    first_folds: int | None = None,
    run_details: Mapping | None = None,
) -> pd.DataFrame:
    """`cross_validate` on MNIST's 60,000 training images (or a stratified `subset` of them,
    drawn with `seed`) with the article's CNN. The 10,000 test images stay out of it."""
    subset = subset or None  # 0 means all
    x, y = load_mnist("train", subset=subset, seed=seed)
    return cross_validate(
        methods, x, y, folds=folds, epochs=epochs, batch_size=batch_size, seed=seed,
        model_fn=create_cnn, results_dir=results_dir, verbose=verbose, first_folds=first_folds,
        run_details=run_details, settings={"dataset": "mnist", "split": "train", "subset": subset},
    )


def cv_results_dir(params: Mapping) -> Path:
    """The results folder a notebook's validated parameters point at: ``params["results_dir"]``
    if set, else a folder under ``output_dir/cv`` named after the settings. Notebooks with the same
    settings share it, so later notebooks read the folds earlier ones trained."""
    if params.get("results_dir"):
        return Path(params["results_dir"])
    return results_dir_for(
        Path(params["output_dir"]) / "cv", subset=params["subset"] or "all",
        folds=params["folds"], epochs=params["epochs"], batch=params["batch_size"],
        seed=params["seed"],
    )
