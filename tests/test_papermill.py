"""The notebooks as a reader reruns them with papermill: parameters are listed, changed values are
used, and a bad value stops the run at the validation cell with a message naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture
def workdir(tmp_path):
    """A copy of the notebooks folder, so outputs land in tmp_path/output."""
    shutil.copytree(NOTEBOOKS, tmp_path / "notebooks")
    return tmp_path / "notebooks"


def stream_text(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("output_type") == "stream")


def test_changed_parameters_are_used(workdir):
    executed = workdir / "executed.ipynb"
    papermill.execute_notebook(
        str(workdir / "01_fit_baseline.ipynb"), str(executed), cwd=str(workdir),
        kernel_name="python3",
        parameters={"folds": 2, "epochs": 1, "subset": 200, "output_dir": "../output"},
        progress_bar=False,
    )
    text = stream_text(nbformat.read(executed, as_version=4))
    assert "'epochs': 1" in text and "'folds': 2" in text and "'subset': 200" in text
    assert (workdir.parent / "output" / "cv" / "subset200-folds2-epochs1-batch64-seed0" / "fit"
            / "fold_01.csv").is_file()


@pytest.mark.parametrize(("name", "value", "message"), [
    ("folds", 1, "folds=1"),
    ("batch_size", 0, "batch_size=0"),
    ("subset", 5, "subset=5"),
])
def test_bad_parameter_stops_with_a_clear_error(workdir, name, value, message):
    executed = workdir / "executed.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(
            str(workdir / "04_cv_comparison.ipynb"), str(executed), cwd=str(workdir),
            kernel_name="python3", parameters={name: value}, progress_bar=False,
        )
    assert error.value.ename == "ValueError"
    assert message in error.value.evalue
    assert not (workdir.parent / "output" / "cv").exists(), "nothing trained or written"


def test_notebook_07_refuses_a_bad_parameter(tmp_path):
    """Notebook 07's own parameters (beyond validate_parameters') stop the run by name, at the
    validation cell, before anything is trained."""
    notebook = NOTEBOOKS / "07_keep_fit_change_step.ipynb"
    shutil.copy(notebook, tmp_path / notebook.name)
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(
            str(tmp_path / notebook.name), str(tmp_path / "executed.ipynb"), cwd=str(tmp_path),
            kernel_name="python3", progress_bar=False,
            parameters={"learning_rate": 0.0, "output_dir": str(tmp_path / "output")})
    assert error.value.ename == "ValueError"
    assert "learning_rate=0.0" in error.value.evalue
    assert not (tmp_path / "output").exists()
