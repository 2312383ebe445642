"""One check for every parameter: the notebooks' papermill parameters and the command lines'.

Every notebook passes its parameters cell through `validate_parameters` right after it, so a bad
``papermill -p`` value stops the run at once with a `ParameterError` (a ValueError) that names the
parameter, the value and what is allowed -- before anything is trained or written. The checkers it
is made of (`check_integer`, `check_number`, `check_project_folder`, `check_output_folder`,
`check_results_folder`, ...) serve notebook 04, appendix A3 and every command line as well: a
command line checks all its options with them before it imports TensorFlow or writes anything,
naming each option as the user typed it (`command_line_names`), and `usage_errors` turns a refusal
into argparse's usage error (one line, exit status 2, no traceback). Importing this module loads
no framework.

Setting the environment variable ``TAPE_VS_FIT_SMOKE=1`` shrinks folds, epochs and subset to a
seconds-long configuration; the test suite uses it to execute every notebook quickly (nbval runs
notebooks as committed, without papermill parameters).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
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
REPOSITORY = Path(__file__).resolve().parents[2]
PROJECT_OUTPUT = REPOSITORY / "output"  # the repository's own, ignored by git
# Where the project writes without a marker: its output/ and the committed results/ (benchmarks
# and measurements write there by design).
PROJECT_FOLDERS = (PROJECT_OUTPUT, REPOSITORY / "results")


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


def command_line_names(*positional: str, **renamed: str) -> Callable[[str], str]:
    """How a command line's user gives each parameter, for the messages: ``batch_size`` as
    ``--batch-size``, the `positional` arguments by their own names, and the `renamed` ones
    (parameter -> option) as the command line calls them."""
    def name(parameter: str) -> str:
        if parameter in renamed:
            return renamed[parameter]
        return parameter if parameter in positional else "--" + parameter.replace("_", "-")
    return name


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """A ParameterError raised in the block ends the program as argparse ends it for an option it
    cannot parse: the usage, then ``prog: error: <the one-line message>``, exit status 2, no
    traceback."""
    try:
        yield
    except ParameterError as error:
        parser.error(str(error))


def check_options(args: argparse.Namespace, minimums: Mapping[str, int],
                  names: Callable[[str], str]) -> None:
    """A command line's whole-number options (`minimums`: option's dest -> least value allowed);
    a ParameterError names the first one below its least value (see `usage_errors`)."""
    for name, minimum in minimums.items():
        check_integer(names(name), getattr(args, name), minimum)


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


def inside_project_folder(path) -> bool:
    """`path` is in the repository's output/ or results/ (see `PROJECT_FOLDERS`), or in a folder
    the project marked as its output folder."""
    folder = Path(path).resolve()
    return (any(folder.is_relative_to(own) for own in PROJECT_FOLDERS)
            or any((parent / OUTPUT_MARKER).is_file() for parent in (folder, *folder.parents)))


def check_output_folder(name: str, path) -> Path:
    """An output folder: in one of the project's own (`inside_project_folder`), or else new,
    empty, or marked as the project's (`check_project_folder`). Returns it; creates nothing."""
    if not inside_project_folder(path):
        check_project_folder(name, path, OUTPUT_MARKER)
    return Path(path)


def check_output_file(name: str, path) -> Path:
    """A file to write (a CSV): not a folder, and in a folder `check_output_folder` accepts.
    Returns it; creates nothing."""
    path = Path(path)
    if path.is_dir():
        refuse(name, str(path), "it is a folder; give the name of a file to write")
    check_output_folder(name, path.parent)
    return path


def check_existing_file(name: str, path) -> Path:
    """`path` must be a file that exists (to read). Returns it."""
    if not Path(path).is_file():
        refuse(name, str(path), "it must be an existing file")
    return Path(path)


def check_results_folder(name: str, path) -> Path:
    """`path` must be a results folder the project made (one holding its settings.json), to read
    results from. Returns it as a Path."""
    folder = Path(path)
    if not (folder / RESULTS_MARKER).is_file():
        refuse(name, str(path), f"it must be a results folder with a {RESULTS_MARKER}")
    return folder


def prepare_output_dir(path) -> Path:
    """Make the output folder (after `check_output_folder`, once every check has passed) and,
    unless it is in one of the project's own, mark it as the project's."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if not inside_project_folder(folder):
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
    trains_on_all: bool = False,
    names: Callable[[str], str] = str,
    smoke: bool | None = None,
    **others,
) -> dict:
    """Check notebook parameters; return them as a dict (shrunk when smoke-testing).

    - dataset: a known dataset name; subset: 0 (or None) for all images, else at least
      10 x folds (every class needs an image in every fold) and at most the dataset's size;
    - folds (when given): >= 2; epochs: >= 1; seed: >= 0;
    - batch_size: from 1 to the number of training images: per fold when cross-validating, all
      of them with `trains_on_all` (the held-out test), else all but a fifth (one split);
    - methods (when given): a non-empty list of names from helpers.training.METHODS.
    - results_dir (when given and not empty): a new or empty folder, or one holding the
      project's settings.json; output_dir (when given): a new or empty folder, one the project
      made, or one in the repository's own ``output/`` (`check_output_folder`); it is created,
      and marked as the project's, once every check has passed. Anything else, e.g. ``/etc``, is
      refused before anything is trained or written.
    Other keyword arguments (paths, flags) are passed through unchanged. Messages name each
    parameter as ``names(parameter)`` (a command line's: `command_line_names`). `smoke` (default:
    whether TAPE_VS_FIT_SMOKE is set) shrinks the settings; a command line passes False.
    """
    if dataset not in DATASETS:
        refuse(names("dataset"), dataset, f"it must be one of {sorted(DATASETS)}")
    if folds is not None:
        check_integer(names("folds"), folds, 2)
    check_integer(names("epochs"), epochs, 1)
    check_integer(names("seed"), seed, 0)
    pool = DATASETS[dataset]
    if subset is not None and subset != 0:
        # an image of every class in every fold, in both parts of a split, or in the sample
        parts = folds or (1 if trains_on_all else 2)
        least = NUM_CLASSES * parts
        if isinstance(subset, int) and not isinstance(subset, bool) and not least <= subset <= pool:
            why = (f"{NUM_CLASSES} classes x {folds} folds" if folds else
                   f"{NUM_CLASSES} classes" if trains_on_all else
                   f"{NUM_CLASSES} classes x 2 parts of the split")
            refuse(names("subset"), subset, f"it must be 0 (all {pool} images) or from {least} "
                   f"({why}) to {pool}")
        check_integer(names("subset"), subset, least, pool)
    if smoke_test() if smoke is None else smoke:
        folds = min(folds, SMOKE_LIMITS["folds"]) if folds is not None else None
        epochs = min(epochs, SMOKE_LIMITS["epochs"])
        subset = min(subset or pool, SMOKE_LIMITS["subset"])
        print(f"{SMOKE_ENV} is set: smoke-test configuration folds={folds}, epochs={epochs}, "
              f"subset={subset}")
    if others.get("results_dir"):
        check_project_folder(names("results_dir"), others["results_dir"], RESULTS_MARKER)
    if others.get("output_dir") is not None:
        check_output_folder(names("output_dir"), others["output_dir"])
    images = subset or pool
    # Cross-validation trains on all but the largest fold; a single split on all but a fifth.
    training_images = images if trains_on_all else images - math.ceil(images / (folds or 5))
    check_integer(names("batch_size"), batch_size, 1, training_images)
    if methods is not None:  # last: the names come from helpers.training, which loads TensorFlow
        methods = check_methods(methods, names)
    checked = dict(others, dataset=dataset, epochs=epochs, batch_size=batch_size, seed=seed,
                   subset=subset or None)
    if folds is not None:
        checked["folds"] = folds
    if methods is not None:
        checked["methods"] = methods
    if others.get("output_dir") is not None:
        prepare_output_dir(others["output_dir"])
    return checked


def check_methods(methods: Iterable[str], names: Callable[[str], str] = str) -> list[str]:
    """`methods` must be a non-empty list of names from helpers.training.METHODS; returns it as a
    list. Loads TensorFlow (helpers.training): a command line checks the rest first, and imports
    helpers.notebook.quiet_tensorflow before it."""
    from helpers.training import METHODS

    if isinstance(methods, str):
        refuse(names("methods"), methods, "it must be a list of names, e.g. ['fit', 'naive']")
    methods = list(methods)
    unknown = [name for name in methods if name not in METHODS]
    if not methods or unknown:
        refuse(names("methods"), methods, f"it must be a non-empty list from {sorted(METHODS)}")
    return methods


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
