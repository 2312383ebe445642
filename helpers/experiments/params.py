"""One check for every parameter: the notebooks' papermill parameters and the command lines'.

Every notebook passes its parameters cell through `validate_parameters` right after it, so a bad
``papermill -p`` value stops the run at once with a `ParameterError` (a ValueError) that names the
parameter, the value and what is allowed -- before anything is trained or written. The checkers it
is made of (`check_integer`, `check_number`, `check_project_folder`, `check_results_folder`) serve
the command lines, notebook 04 and appendix A3 as well. Importing this module loads no framework.

Setting the environment variable ``TAPE_VS_FIT_SMOKE=1`` shrinks folds, epochs and subset to a
seconds-long configuration; the test suite uses it to execute every notebook quickly (nbval runs
notebooks as committed, without papermill parameters).
"""

from __future__ import annotations

import argparse
import math
import operator
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from helpers.data import NUM_CLASSES

DATASETS = {"mnist": 60_000}  # name -> images in the pool that is cross-validated
# The quick preset: the defaults of the notebooks that cross-validate (01, 02, 04), which read
# back each other's folds. Chosen so that at these settings the article's loop visibly overfits
# (its mean validation loss turns up after its lowest epoch) and fit's does not, with enough folds
# for the paired sign-flip test to reach p = 2 / 2**8; tests/test_story.py checks notebook 02's
# stored run. The article's settings: 10 folds, 30 epochs, batch 64, all 60,000 images.
QUICK_CV = {"folds": 8, "epochs": 20, "batch_size": 64, "subset": 1200, "seed": 0}
SMOKE_ENV = "TAPE_VS_FIT_SMOKE"
SMOKE_LIMITS = {"folds": 2, "epochs": 2, "subset": 600}
# What marks a folder as the project's own: a results folder holds the settings it was made with
# (helpers.experiments.store writes it first); an output folder gets a marker file when the
# project makes it.
RESULTS_MARKER = "settings.json"
OUTPUT_MARKER = ".tape-vs-fit-output"
COMPARISONS = {">=": operator.ge, ">": operator.gt, "<": operator.lt}
PROJECT_OUTPUT = Path(__file__).resolve().parents[2] / "output"  # the repository's own, ignored


class ParameterError(ValueError):
    """A parameter's value is not allowed; the message names the parameter, the value and what is
    allowed. The command lines print it without a traceback."""


def refuse(name: str, value, allowed: str):
    """Raise the one message every check gives: parameter, value, what is allowed."""
    raise ParameterError(f"parameter {name}={value!r} is not allowed: {allowed}")


def check_integer(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """`value` must be an int (not a bool) from `minimum` to `maximum` (inclusive; no upper
    bound without it). Returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        refuse(name, value, f"it must be a whole number (an int), got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        refuse(name, value, f"it must be {bound}")
    return value


def check_number(name: str, value, *, minimum: float | None = None, above: float | None = None,
                 below: float | None = None) -> float:
    """`value` must be an int or float (not a bool) that is >= `minimum`, > `above` and < `below`
    (each bound only when given). Returns it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        refuse(name, value, f"it must be a number, got {type(value).__name__}")
    bounds = [(sign, bound) for sign, bound in ((">=", minimum), (">", above), ("<", below))
              if bound is not None]
    if not all(COMPARISONS[sign](value, bound) for sign, bound in bounds):
        allowed = " and ".join(f"{sign} {bound}" for sign, bound in bounds)
        refuse(name, value, f"it must be {allowed}")
    return value


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  minimums: Mapping[str, int]) -> None:
    """A command line's whole-number options (`minimums`: option's dest -> least value allowed):
    a value below ends the program with the parser's usage and the message (exit code 2, no
    traceback)."""
    try:
        for name, minimum in minimums.items():
            check_integer(f"--{name.replace('_', '-')}", getattr(args, name), minimum)
    except ParameterError as error:
        parser.error(str(error))


def check_project_folder(name: str, path, marker: str) -> Path:
    """Refuse a folder the project must not write into: `path` must be new, empty, or hold
    `marker` (the project made it). Raises a ParameterError naming parameter `name`; returns the
    path. Nothing is created here."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        refuse(name, str(path), "it is a file; give a new folder, an empty one, or one this "
               "project made")
    if folder.is_dir() and not (folder / marker).exists() and any(folder.iterdir()):
        refuse(name, str(path), f"the folder is not empty and this project did not make it (no "
               f"{marker} in it); give a new folder, an empty one, or one this project made")
    return folder


def check_results_folder(name: str, path) -> Path:
    """`path` must be a results folder the project made (one holding its settings.json), to read
    results from. Returns it as a Path."""
    folder = Path(path)
    if not (folder / RESULTS_MARKER).is_file():
        refuse(name, str(path), f"it must be a results folder with a {RESULTS_MARKER}")
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
    from helpers.training import METHODS  # here: importing this module loads no framework

    if dataset not in DATASETS:
        refuse("dataset", dataset, f"it must be one of {sorted(DATASETS)}")
    if folds is not None:
        check_integer("folds", folds, 2)
    check_integer("epochs", epochs, 1)
    check_integer("seed", seed, 0)
    if methods is not None:
        if isinstance(methods, str):
            refuse("methods", methods, "it must be a list of names, e.g. ['fit', 'naive']")
        methods = list(methods)
        unknown = [name for name in methods if name not in METHODS]
        if not methods or unknown:
            refuse("methods", methods, f"it must be a non-empty list from {sorted(METHODS)}")
    pool = DATASETS[dataset]
    if subset is not None and subset != 0:
        check_integer("subset", subset, NUM_CLASSES * (folds or 2), pool)
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
    check_integer("batch_size", batch_size, 1, training_images)
    checked = dict(others, dataset=dataset, epochs=epochs, batch_size=batch_size, seed=seed,
                   subset=subset or None)
    if folds is not None:
        checked["folds"] = folds
    if methods is not None:
        checked["methods"] = methods
    if others.get("output_dir") is not None:
        prepare_output_dir(others["output_dir"])
    return checked


def validate_ablation_parameters(*, ablation_folds: int, folds: int, full_scale_dir,
                                 baseline_dir) -> dict:
    """Notebook 04's own parameters: `ablation_folds` from 1 to `folds` (the validated count);
    `full_scale_dir` and `baseline_dir` results folders the project made. Returns them, the
    folders as Paths."""
    return {
        "ablation_folds": check_integer("ablation_folds", ablation_folds, 1, folds),
        "full_scale_dir": check_results_folder("full_scale_dir", full_scale_dir),
        "baseline_dir": check_results_folder("baseline_dir", baseline_dir),
    }
