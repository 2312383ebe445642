"""One check for every notebook's papermill parameters.

Every notebook passes its parameters cell through `validate_parameters` right after it, so a bad
``papermill -p`` value stops the run at once with a ValueError that names the parameter, the value
and what is allowed -- before anything is trained or written.

Setting the environment variable ``TAPE_VS_FIT_SMOKE=1`` shrinks folds, epochs and subset to a
seconds-long configuration; the test suite uses it to execute every notebook quickly (nbval runs
notebooks as committed, without papermill parameters).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from helpers.data import NUM_CLASSES
from helpers.training import METHODS

DATASETS = {"mnist": 60_000}  # name -> images in the pool that is cross-validated
SMOKE_ENV = "TAPE_VS_FIT_SMOKE"
SMOKE_LIMITS = {"folds": 2, "epochs": 2, "subset": 600}
# What marks a folder as the project's own: a results folder holds the settings it was made with
# (helpers.experiments.cv writes it first); an output folder gets a marker file when the project
# makes it.
RESULTS_MARKER = "settings.json"
OUTPUT_MARKER = ".tape-vs-fit-output"
PROJECT_OUTPUT = Path(__file__).resolve().parent.parent / "output"  # the repository's own, ignored


def _fail(name, value, allowed):
    raise ValueError(f"parameter {name}={value!r} is not allowed: {allowed}")


def _integer(name, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, f"it must be a whole number (an int), got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        _fail(name, value, f"it must be {bound}")
    return value


def check_project_folder(name: str, path, marker: str) -> Path:
    """Refuse a folder the project must not write into: `path` must be new, empty, or hold
    `marker` (the project made it). Raises a ValueError naming parameter `name`; returns the
    path. Nothing is created here."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        _fail(name, str(path), "it is a file; give a new folder, an empty one, or one this "
              "project made")
    if folder.is_dir() and not (folder / marker).exists() and any(folder.iterdir()):
        _fail(name, str(path), f"the folder is not empty and this project did not make it (no "
              f"{marker} in it); give a new folder, an empty one, or one this project made")
    return folder


def prepare_output_dir(path) -> Path:
    """Make the output folder (after `check_project_folder`) and mark it as the project's."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OUTPUT_MARKER).touch()
    return folder


def smoke_test() -> bool:
    return os.environ.get(SMOKE_ENV, "") not in ("", "0")


def validate_parameters(
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    subset: int | None = 0,
    folds: int | None = None,
    dataset: str = "mnist",
    methods: Iterable[str] | None = None,
    **others,
) -> dict:
    """Check notebook parameters; return them as a dict (shrunk when smoke-testing).

    - dataset: a known dataset name; subset: 0 (or None) for all images, else at least
      10 x folds (every class needs an image in every fold) and at most the dataset's size;
    - folds (when given): >= 2; epochs: >= 1; seed: >= 0;
    - batch_size: from 1 to the number of training images (per fold when cross-validating);
    - methods (when given): a non-empty list of names from helpers.training.METHODS.
    - results_dir (when given and not empty): a new or empty folder, or one holding the
      project's settings.json; output_dir (when given): a new or empty folder, one the project
      made, or the repository's own ``output/``; it is then created and marked as the
      project's. Anything else, e.g. ``/etc``, is refused before anything is trained or written.
    Other keyword arguments (paths, flags) are passed through unchanged.
    """
    if dataset not in DATASETS:
        _fail("dataset", dataset, f"it must be one of {sorted(DATASETS)}")
    if folds is not None:
        _integer("folds", folds, 2)
    _integer("epochs", epochs, 1)
    _integer("seed", seed, 0)
    if methods is not None:
        if isinstance(methods, str):
            _fail("methods", methods, "it must be a list of names, e.g. ['fit', 'naive']")
        methods = list(methods)
        unknown = [name for name in methods if name not in METHODS]
        if not methods or unknown:
            _fail("methods", methods, f"it must be a non-empty list from {sorted(METHODS)}")
    pool = DATASETS[dataset]
    if subset is not None and subset != 0:
        _integer("subset", subset, NUM_CLASSES * (folds or 2), pool)
    if smoke_test():
        folds = min(folds, SMOKE_LIMITS["folds"]) if folds is not None else None
        epochs = min(epochs, SMOKE_LIMITS["epochs"])
        subset = min(subset or pool, SMOKE_LIMITS["subset"])
        print(f"{SMOKE_ENV} is set: smoke-test configuration folds={folds}, epochs={epochs}, "
              f"subset={subset}")
    if others.get("results_dir"):
        check_project_folder("results_dir", others["results_dir"], RESULTS_MARKER)
    if others.get("output_dir") is not None:
        output_dir = Path(others["output_dir"])
        if output_dir.resolve() != PROJECT_OUTPUT:
            check_project_folder("output_dir", output_dir, OUTPUT_MARKER)
    images = subset or pool
    # Cross-validation trains on all but the largest fold; a single split on all but a fifth.
    training_images = images - math.ceil(images / (folds or 5))
    _integer("batch_size", batch_size, 1, training_images)
    checked = dict(others, dataset=dataset, epochs=epochs, batch_size=batch_size, seed=seed,
                   subset=subset or None)
    if folds is not None:
        checked["folds"] = folds
    if methods is not None:
        checked["methods"] = methods
    if others.get("output_dir") is not None:
        prepare_output_dir(others["output_dir"])
    return checked
