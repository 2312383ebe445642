"""What a reader sees (issue #10): no TensorFlow log noise (item 9), metadata JupyterLab leaves
unchanged (item 10), outputs named by their settings (item 11), a link to the next notebook at the
end of every notebook and `jupyter lab` in the README's quick start (item 16)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers.notebook.quiet_tensorflow import CPP_LOG_LINE, is_start_up_line
from helpers.tooling.notebook_index import notebook_paths

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebook_paths(ROOT)
JUPYTERLAB_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python",
                         "name": "python3"}


def stderr_lines(notebook):
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                yield from output.get("text", "").splitlines()


# --- item 9 ------------------------------------------------------------------------------------

@pytest.mark.versionless
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_tensorflow_log_lines_in_committed_outputs(path):
    noise = [line for line in stderr_lines(nbformat.read(path, as_version=4))
             if CPP_LOG_LINE.match(line) or "absl::InitializeLog" in line]
    assert not noise, f"{path.name} has TensorFlow C++ log lines in its outputs: {noise[:3]}"


def test_the_setup_cell_prints_versions_and_no_start_up_lines():
    """What every Setup cell runs after installing (setup_notebook), in a fresh interpreter (as
    a fresh kernel): TensorFlow imported without its start-up lines, one line of versions, one of
    the versions the notebook needs."""
    result = subprocess.run(
        [sys.executable, "-c", "from helpers.notebook.setup import setup_notebook; "
         "setup_notebook(); import tensorflow as tf; print(tf.reduce_sum(tf.ones(3)).numpy())"],
        capture_output=True, text=True, check=True, cwd=ROOT,
        env={key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"},
    )
    lines = result.stdout.splitlines()
    assert lines[-3].startswith("TensorFlow ") and " · Keras " in lines[-3], result.stdout
    assert lines[-2].startswith("This notebook needs TensorFlow "), result.stdout
    assert lines[-1] == "3.0"
    assert not [line for line in result.stderr.splitlines() if CPP_LOG_LINE.match(line)
                or "absl::InitializeLog" in line], result.stderr


@pytest.mark.versionless
def test_only_known_start_up_lines_are_dropped():
    assert is_start_up_line("I0000 00:00:1795761132.467744    9167 port.cc:153] oneDNN custom "
                            "operations are on.")
    assert is_start_up_line("E0000 00:00:1795761147.417033    9167 cuda_platform.cc:52] failed "
                            "call to cuInit: INTERNAL")
    assert not is_start_up_line("E1127 06:47:01.123456   9167 executor.cc:12] a real error")
    assert not is_start_up_line("Traceback (most recent call last):")


# --- item 10 -----------------------------------------------------------------------------------

@pytest.mark.versionless
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_metadata_is_what_jupyterlab_writes(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"] == JUPYTERLAB_KERNELSPEC
    assert (notebook.nbformat, notebook.nbformat_minor) >= (4, 5)  # cell ids, as JupyterLab 4
    assert all(cell.get("id") for cell in notebook.cells)
    nbformat.validate(notebook)


# --- item 11 -----------------------------------------------------------------------------------

# The target of a write: the argument of savefig/to_csv and path=, the receiver of write_text.
WRITERS = re.compile(r"\.(savefig|to_csv)\(\s*([^,)]+)|\bpath=([^,)]+)"
                     r"|\(?(\w+)(?: / [^)\n]*)?\)?\.write_text\(")


@pytest.mark.versionless
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_go_to_a_folder_named_by_the_settings(path):
    """Every file a notebook writes goes under a folder made by `results_dir_for` or
    `cv_results_dir` (named after the settings), never straight into output_dir."""
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                       if c.cell_type == "code")
    settings_folders = set(re.findall(r"^(\w+) = (?:results_dir_for|cv_results_dir)\(", source,
                                      re.MULTILINE))
    for match in WRITERS.finditer(source):
        target = (match.group(2) or match.group(3) or match.group(4)).strip()
        root = re.match(r"\(?(\w+)", target).group(1)
        assert root in settings_folders, (
            f"{path.name} writes to {target!r}, not under a settings-named folder "
            f"({sorted(settings_folders)})")


# --- item 16 -----------------------------------------------------------------------------------

def _last_links(path):
    last = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"][-1]
    return re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", last.source)


@pytest.mark.versionless
@pytest.mark.parametrize("index", range(len(NOTEBOOKS)), ids=lambda i: NOTEBOOKS[i].name)
def test_every_notebook_ends_with_a_link_to_the_next(index):
    path = NOTEBOOKS[index]
    expected = NOTEBOOKS[index + 1].name if index + 1 < len(NOTEBOOKS) else "../README.md"
    links = _last_links(path)
    assert expected in links, f"{path.name} should end with a link to {expected}; has {links}"
    for link in links:
        assert (path.parent / link).resolve().exists(), link


@pytest.mark.versionless
def test_readme_quick_start_opens_jupyterlab():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/jupyter lab" in quick_start

