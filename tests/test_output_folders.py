"""Issue #10 item 18: results_dir and output_dir must be new, empty, or made by the project;
anything else (``-p results_dir /etc``) is refused before training, naming the parameter."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import folder_snapshot

from helpers.experiments import cv, heldout, params, store
from helpers.experiments.params import (
    OUTPUT_MARKER,
    SMOKE_ENV,
    ParameterError,
    validate_parameters,
)

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
FOLDER_PARAMETERS = ("results_dir", "output_dir")  # the folders a notebook writes into

VALID = dict(epochs=1, batch_size=8, seed=0, subset=100, folds=2)


@pytest.fixture(autouse=True)
def _no_smoke_env(monkeypatch):
    monkeypatch.delenv(SMOKE_ENV, raising=False)


@pytest.fixture
def foreign_folder(tmp_path):
    """A non-empty folder the project did not make."""
    folder = tmp_path / "someone_elses"
    folder.mkdir()
    (folder / "notes.txt").write_text("not ours\n")
    return folder


@pytest.mark.parametrize("name", ["results_dir", "output_dir"])
def test_etc_is_refused(name):
    with pytest.raises(ValueError, match=f"parameter {name}='/etc'"):
        validate_parameters(**VALID, **{name: "/etc"})


@pytest.mark.parametrize("name", ["results_dir", "output_dir"])
def test_a_foreign_folder_or_a_file_is_refused(name, foreign_folder):
    with pytest.raises(ValueError, match=f"parameter {name}=.*this project did not make it"):
        validate_parameters(**VALID, **{name: str(foreign_folder)})
    with pytest.raises(ValueError, match=f"parameter {name}=.*it is a file"):
        validate_parameters(**VALID, **{name: str(foreign_folder / "notes.txt")})
    assert sorted(p.name for p in foreign_folder.iterdir()) == ["notes.txt"]  # nothing written


@pytest.mark.parametrize("name", ["results_dir", "output_dir"])
def test_new_and_empty_folders_are_accepted(name, tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        assert validate_parameters(**VALID, **{name: str(folder)})[name] == str(folder)


def test_a_results_folder_the_project_made_is_accepted(tmp_path):
    (tmp_path / "settings.json").write_text("{}\n")
    (tmp_path / "fit").mkdir()
    assert validate_parameters(**VALID, results_dir=str(tmp_path))


def test_an_output_folder_is_marked_and_then_accepted(tmp_path):
    output = tmp_path / "out"
    validate_parameters(**VALID, output_dir=str(output))
    assert (output / OUTPUT_MARKER).exists()
    (output / "figures").mkdir()  # what a notebook writes next
    assert validate_parameters(**VALID, output_dir=str(output))


def test_the_repository_output_folder_is_the_projects(tmp_path):
    """scripts/run_notebooks.sh puts executed notebooks into output/notebooks before any
    notebook has run: the repository's own (git-ignored) output/ needs no marker."""
    from helpers.experiments.params import PROJECT_OUTPUT

    assert (PROJECT_OUTPUT.parent / "pyproject.toml").is_file(), PROJECT_OUTPUT  # the checkout's
    assert validate_parameters(**VALID, output_dir=str(PROJECT_OUTPUT))


def test_cross_validate_refuses_before_training(foreign_folder, mnist_small):
    x, y = mnist_small

    def must_not_build(seed):
        raise AssertionError("a model was built: training began")

    with pytest.raises(ValueError, match="results_dir="):
        cv.cross_validate(["fit"], x[:100], y[:100], folds=2, epochs=1, batch_size=8,
                          model_fn=must_not_build, results_dir=foreign_folder, verbose=0)
    assert sorted(p.name for p in foreign_folder.iterdir()) == ["notes.txt"]


def test_held_out_test_refuses_before_training(foreign_folder):
    def must_not_build(seed):
        raise AssertionError("a model was built: training began")

    with pytest.raises(ValueError, match="results_dir="):
        heldout.train_and_test(["fit"], epochs=1, batch_size=8, subset=100,
                               model_fn=must_not_build, results_dir=foreign_folder, verbose=0)


def test_the_store_writes_only_into_a_results_folder_the_project_made(foreign_folder):
    """Every writer of helpers.experiments.store refuses a folder without settings.json."""
    results = store.ResultsFolder(foreign_folder)
    with pytest.raises(ValueError, match="parameter results_dir=.*settings.json"):
        results.write_table("table.csv", pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match="parameter results_dir=.*settings.json"):
        results.write_json("run_info.json", {})
    assert sorted(p.name for p in foreign_folder.iterdir()) == ["notes.txt"]


def parameter_cells(path: Path) -> tuple[str, str]:
    """The source of a notebook's ``parameters`` cell and of the cell after it, which validates
    them."""
    cells = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    index = next(i for i, cell in enumerate(cells) if "parameters" in cell.metadata.get("tags", []))
    return cells[index].source, cells[index + 1].source


def notebook_folders() -> list[tuple[str, str]]:
    """(notebook, folder parameter) for every folder a notebook's parameters name."""
    found = []
    for path in NOTEBOOKS:
        namespace = {}
        exec(parameter_cells(path)[0], namespace)
        found += [(path.name, name) for name in FOLDER_PARAMETERS if name in namespace]
    return found


def run_validation(notebook: str, **changes) -> None:
    """The notebook's parameters cell, then `changes` (as ``papermill -p`` would inject them),
    then its validation cell -- in this process, with the names that cell calls."""
    from helpers.tooling import launcher

    parameters, validation = parameter_cells(next(p for p in NOTEBOOKS if p.name == notebook))
    namespace = {**vars(params), "launcher": launcher, "SEED": 0}
    exec(parameters, namespace)
    namespace.update(changes)
    exec(validation, namespace)


@pytest.mark.parametrize("notebook, name", notebook_folders())
def test_a_notebook_leaves_a_folder_it_did_not_make_byte_identical(notebook, name,
                                                                  foreign_folder):
    """Issue #22: every notebook parameter that names a results or output folder, given a folder
    the project did not make, stops the validation cell with a ParameterError naming it, and the
    folder (its sentinel file) is byte-identical afterwards."""
    before = folder_snapshot(foreign_folder.parent)
    with pytest.raises(ParameterError, match=f"parameter {name}=.*this project did not make it"):
        run_validation(notebook, **{name: str(foreign_folder)})
    assert folder_snapshot(foreign_folder.parent) == before


@pytest.mark.parametrize("notebook, name", notebook_folders())
def test_a_notebook_makes_no_folder_before_every_check_passed(notebook, name, tmp_path):
    """A new folder and a bad value of another parameter: refused, and the folder not made."""
    with pytest.raises(ParameterError, match="parameter epochs=0"):
        run_validation(notebook, epochs=0, **{name: str(tmp_path / "new")})
    assert not (tmp_path / "new").exists()
