"""Stratified k-fold cross-validation of several training methods, saved fold by fold.

`cross_validate` splits with scikit-learn's StratifiedKFold (shuffled, seeded), so every method
sees the same folds; fold f's model is built with ``model_fn(seed=seed + f)`` for every method, so
every method starts fold f from the same initial weights. It returns one tidy table, a row per
method x fold x epoch.

With a `results_dir`, each finished (method, fold) is written at once to
``results_dir/<method>/fold_<f>.csv``; a rerun of an interrupted run reads the finished folds
instead of training them again. ``results_dir/settings.json`` records what the results were made
with: a folder made with other settings is refused, never mixed in, and so is a non-empty folder
without it (one the project did not make).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.data import class_ids, load_mnist
from helpers.experiments.params import RESULTS_MARKER, check_project_folder
from helpers.model import create_cnn
from helpers.training import HISTORY_KEYS, METHODS

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


def _check_or_write_settings(results_dir: Path, settings: dict) -> None:
    """Refuse a folder made with other settings, or not made by the project (a non-empty
    folder without settings.json); otherwise record the settings."""
    path = results_dir / RESULTS_MARKER
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != settings:
            differences = ", ".join(
                f"{key}: saved {saved.get(key)!r}, now {settings.get(key)!r}"
                for key in sorted(set(saved) | set(settings))
                if saved.get(key) != settings.get(key)
            )
            raise ValueError(
                f"results folder {results_dir} holds results made with other settings "
                f"({differences}). Use another results folder, or delete this one to start over."
            )
        return
    check_project_folder("results_dir", results_dir, RESULTS_MARKER)
    results_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file and rename it, so a killed run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def history_table(history: Mapping[str, list], method: str, fold: int) -> pd.DataFrame:
    epochs = len(history["loss"])
    table = pd.DataFrame({key: history[key] for key in (*HISTORY_KEYS, "seconds")})
    table.insert(0, "epoch", np.arange(1, epochs + 1))
    table.insert(0, "fold", fold)
    table.insert(0, "method", method)
    return table[COLUMNS]


def run_info() -> dict:
    """Machine and library versions, stored beside the results."""
    import keras
    import sklearn
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "system": platform.platform(),
    }


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
) -> pd.DataFrame:
    """Train every method on every fold; return a row per method x fold x epoch.

    `methods` maps names to training functions with the `helpers.training` signature, or lists
    names from `helpers.training.METHODS`. `settings` adds descriptions of the data (dataset,
    subset, ...) to what `results_dir/settings.json` records and checks. `verbose`: 0 silent,
    1 one line per fold and method (its last epoch's History values, in `HISTORY_KEYS` order),
    2 also Keras-style progress bars. `first_folds`: train (or read back) only the first this many
    of the `folds` folds -- the same folds as a full run, fewer of them.
    """
    if not isinstance(methods, Mapping):
        unknown = [name for name in methods if name not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
        methods = {name: METHODS[name] for name in methods}
    splits = fold_indices(y, folds, seed)
    results_path = Path(results_dir) if results_dir is not None else None
    if results_path is not None:
        _check_or_write_settings(results_path, {
            **dict(settings or {}),
            "folds": folds, "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "model": getattr(model_fn, "__name__", str(model_fn)),
            "samples": len(x), "data_sha256": data_fingerprint(x, y),
        })
    tables = []
    # Fold-major order: after any number of finished folds, every method has the same folds, so
    # a partial run can already be compared pairwise.
    for fold, (train_idx, val_idx) in enumerate(splits[:first_folds]):
        for method, train in methods.items():
            fold_file = results_path / method / f"fold_{fold:02d}.csv" if results_path else None
            if fold_file is not None and fold_file.exists():
                # round_trip: pandas 2's default parser can change a float's last digit, and a
                # resumed run must equal an uninterrupted one (pandas 3 round-trips anyway).
                tables.append(pd.read_csv(fold_file, float_precision="round_trip"))
                if verbose:
                    print(f"fold {fold + 1}/{folds} {method}: finished earlier, read {fold_file}")
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
            if fold_file is not None:
                fold_file.parent.mkdir(parents=True, exist_ok=True)
                for leftover in fold_file.parent.glob(f".{fold_file.name}.*.tmp"):
                    leftover.unlink()  # from a run killed while writing this fold
                _write_atomically(fold_file, table.to_csv(index=False))
            tables.append(table)
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
) -> pd.DataFrame:
    """`cross_validate` on MNIST's 60,000 training images (or a stratified `subset` of them,
    drawn with `seed`) with the article's CNN. The 10,000 test images stay out of it."""
    subset = subset or None  # 0 means all
    x, y = load_mnist("train", subset=subset, seed=seed)
    return cross_validate(
        methods, x, y, folds=folds, epochs=epochs, batch_size=batch_size, seed=seed,
        model_fn=create_cnn, results_dir=results_dir, verbose=verbose, first_folds=first_folds,
        settings={"dataset": "mnist", "split": "train", "subset": subset},
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
