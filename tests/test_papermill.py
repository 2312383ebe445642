"""The notebooks as a reader reruns them with papermill: changed values are injected and used, and a
bad value stops the run at the validation cell with a message naming it.

Each run executes a copy of the notebook that ends with its validation cell (the code cell after
the parameters cell): injection and validation are what papermill adds; the whole notebooks run
under nbval and in JupyterLab (tests/test_browser.py), and tests/test_notebooks.py checks that
every parameter reaches the validation cell.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def through_validation(name: str, folder: Path) -> Path:
    """notebooks/`name` up to and including its validation cell, written into `folder`."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    cells = notebook.cells
    tagged = next(i for i, cell in enumerate(cells)
                  if "parameters" in cell.metadata.get("tags", []))
    validation = next(i for i in range(tagged + 1, len(cells)) if cells[i].cell_type == "code")
    notebook.cells = cells[:validation + 1]
    path = folder / name
    nbformat.write(notebook, path)
    return path


def execute(name: str, folder: Path, parameters: dict) -> nbformat.NotebookNode:
    folder.mkdir(parents=True, exist_ok=True)
    executed = folder / "executed.ipynb"
    papermill.execute_notebook(
        str(through_validation(name, folder)), str(executed), cwd=str(folder),
        kernel_name="python3", parameters=parameters, progress_bar=False,
    )
    return nbformat.read(executed, as_version=4)


def stream_text(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("output_type") == "stream")


def test_changed_parameters_are_used(tmp_path):
    parameters = {"folds": 2, "epochs": 1, "subset": 200, "output_dir": "../output"}
    executed = execute("01_fit_baseline.ipynb", tmp_path / "notebooks", parameters)
    tags = [cell.metadata.get("tags", []) for cell in executed.cells]
    injected = next(i for i, cell_tags in enumerate(tags) if "injected-parameters" in cell_tags)
    assert "parameters" in tags[injected - 1], "injected right after the parameters cell"
    assert "folds = 2" in executed.cells[injected].source
    text = stream_text(executed)
    assert "'epochs': 1" in text and "'folds': 2" in text and "'subset': 200" in text
    # The validated values name the results folder the rest of the notebook writes into.
    assert "cv/subset200-folds2-epochs1-batch64-seed0" in text, text[-2000:]


def test_a_bad_parameter_stops_the_run_with_a_clear_error(tmp_path):
    """A bad value stops the run by name, at the validation cell, before anything is written:
    here one of appendix A2's own parameters (beyond validate_parameters'). Every notebook's
    validation cell raises the same ParameterError (tests/test_notebooks.py checks that each
    parameter reaches it; tests/test_params.py, each parameter's refused values)."""
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute("A2_keep_fit_change_step.ipynb", tmp_path / "notebooks",
                {"learning_rate": 0.0, "output_dir": str(tmp_path / "output")})
    assert error.value.ename == "ParameterError"  # a ValueError naming the parameter
    assert "learning_rate=0.0" in error.value.evalue
    assert not (tmp_path / "output").exists()
