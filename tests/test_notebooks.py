"""Structure every notebook shares: a Setup cell first, a papermill parameters cell of literals
validated right after, the Colab install line pointing at the configured repository, no absolute
paths. (nbval runs them; this checks what a reader and papermill rely on. The Setup cell itself:
tests/test_repository.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import papermill
import pytest

from helpers.tooling.notebook_index import REPOSITORY, SETUP_CALL, notebook_paths

NOTEBOOKS = notebook_paths(Path(__file__).resolve().parent.parent)

pytestmark = pytest.mark.versionless


def code_cells(path):
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks: every test below would be skipped"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_then_parameters_then_validation(path):
    cells = code_cells(path)
    setup = cells[0].source
    assert SETUP_CALL in setup, "first code cell must be the Setup cell"
    assert f"git+https://github.com/{REPOSITORY}" in setup, (
        "the Colab install line must point at helpers.tooling.notebook_index.REPOSITORY")
    first = ast.parse(cells[1].source).body[:1]
    assert first and isinstance(first[0], (ast.Import, ast.ImportFrom)), (
        "the notebook's imports come right after the Setup cell, in a cell of their own")
    tagged = [i for i, cell in enumerate(cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    parameters = ast.parse(cells[tagged[0]].source)
    names = set()
    for statement in parameters.body:
        assert isinstance(statement, ast.AnnAssign), "parameters are typed: `name: type = value`"
        ast.literal_eval(statement.value)  # papermill parameters are literals
        names.add(statement.target.id)
    # Every parameter must be visible to `papermill --help-notebook` (its parser skips a line
    # with a second "=", e.g. in the comment, and then loses the next parameter too).
    listed = papermill.inspect_notebook(str(path))
    assert set(listed) == names
    assert all(info["inferred_type_name"] != "None" and info["help"] for info in listed.values())
    validation = cells[tagged[0] + 1].source
    assert "validate_parameters(" in validation
    # Every parameter reaches the validation cell (papermill's bad values: test_papermill.py).
    used = {node.id for node in ast.walk(ast.parse(validation)) if isinstance(node, ast.Name)}
    assert names <= used, f"parameters the validation cell does not check: {names - used}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_absolute_paths_and_no_stored_errors(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not re.search(r"[\"'](/[\w.-]+){2,}", cell.source), cell.source
            assert all(out.get("output_type") != "error" for out in cell.get("outputs", []))


def _printed_parameters(cell) -> dict | None:
    """The validated parameters the cell printed as a dict on its first line, if it did."""
    text = "".join(out.get("text", "") for out in cell.get("outputs", [])
                   if out.get("output_type") == "stream")
    first = text.split("\n", 1)[0]
    if not first.startswith("{"):
        return None
    return ast.literal_eval(re.sub(r"PosixPath\(('[^']*')\)", r"\1", first))


def _parameters_and_validation(path):
    cells = code_cells(path)
    index = next(i for i, cell in enumerate(cells) if "parameters" in cell.metadata.get("tags", []))
    return cells[index], cells[index + 1]


PRINTING_PARAMETERS = [path for path in NOTEBOOKS
                       if _printed_parameters(_parameters_and_validation(path)[1])]


def test_some_notebooks_print_their_parameters():
    assert PRINTING_PARAMETERS, "no validation cell prints its parameters: nothing checked below"


@pytest.mark.parametrize("path", PRINTING_PARAMETERS, ids=lambda p: p.name)
def test_stored_outputs_come_from_the_default_parameters(path):
    """The committed outputs are a run at the parameters cell's defaults: the validation cell's
    printed parameters equal them (run scripts/run_notebooks.sh, then scripts/store_outputs.py)."""
    parameters, validation = _parameters_and_validation(path)
    defaults = {statement.target.id: ast.literal_eval(statement.value)
                for statement in ast.parse(parameters.source).body}
    printed = _printed_parameters(validation)
    stale = {name: (printed[name], value) for name, value in defaults.items()
             if name in printed and printed[name] != value}
    assert not stale, f"stored outputs ran with other parameters (printed, default): {stale}"
