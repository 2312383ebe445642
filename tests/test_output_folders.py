"""Issue #10 item 18: results_dir and output_dir must be new, empty, or made by the project;
anything else (``-p results_dir /etc``) is refused before training, naming the parameter."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers.experiments import cv, heldout, store
from helpers.experiments.params import OUTPUT_MARKER, SMOKE_ENV, validate_parameters

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
