"""`REPOSITORY` in helpers/tooling/notebook_index.py is the one place that names the GitHub
repository: the README's badges, the notebooks' badges and the Setup cells' install lines are
generated from it, so a fork that changes that line and reruns the generator points everything at
itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers.tooling.notebook_index import (
    INSTALL_END,
    INSTALL_START,
    REPOSITORY,
    NotebookIndexError,
    install_block,
    install_source,
    setup_cell,
    updated_setup_source,
)

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("README.md", "notebooks/")
# results/ holds executed records of past runs, kept as they ran.
ARCHIVED = ("results/",)

pytestmark = pytest.mark.versionless


def tracked_text_files(root: Path) -> dict[str, str]:
    names = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.split()
    texts = {}
    for name in names:
        try:
            texts[name] = (root / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
    return texts


def test_repository_is_named_only_where_it_is_generated():
    definition = "helpers/tooling/notebook_index.py"
    for name, text in tracked_text_files(ROOT).items():
        if REPOSITORY in text:
            assert name == definition or name.startswith(GENERATED + ARCHIVED), (
                f"{name} names {REPOSITORY} by hand; generate it from notebook_index.REPOSITORY")


def test_one_change_to_repository_updates_readme_badges_and_setup_cells(tmp_path):
    copy = tmp_path / "fork"
    copy.mkdir()
    shutil.copy2(ROOT / "README.md", copy)
    shutil.copytree(ROOT / "notebooks", copy / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "helpers", copy / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    module = copy / "helpers" / "tooling" / "notebook_index.py"
    line = f'REPOSITORY = "{REPOSITORY}"'
    source = module.read_text(encoding="utf-8")
    assert source.count(line) == 1
    module.write_text(source.replace(line, 'REPOSITORY = "someone/fork"'), encoding="utf-8")

    # `python -m` from the copy imports the copy's helpers (the working directory comes first).
    result = subprocess.run([sys.executable, "-m", "helpers.tooling.notebook_index"], cwd=copy,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for path in [copy / "README.md", *sorted((copy / "notebooks").glob("*.ipynb"))]:
        text = path.read_text(encoding="utf-8")
        assert REPOSITORY not in text, f"{path.name} still names {REPOSITORY}"
        assert "someone/fork" in text
    readme = (copy / "README.md").read_text(encoding="utf-8")
    assert "colab.research.google.com/github/someone/fork/blob/" in readme
    assert "mybinder.org/v2/gh/someone/fork/" in readme
    for path in sorted((copy / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        setup = setup_cell(notebook).source
        expected = install_block(repository="someone/fork")
        assert expected in setup, f"{path.name}: Setup cell's install block not regenerated"
        assert "git+https://github.com/someone/fork" in expected


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_setup_cell_has_the_current_install_block(path):
    setup = setup_cell(nbformat.read(path, as_version=4)).source
    assert setup.count(install_block()) == 1, (
        f"{path.name}: the Setup cell needs the generated install block; add the marker lines "
        f"{INSTALL_START!r} and {INSTALL_END!r} and run `python -m helpers.tooling.notebook_index`")


OLD_SETUP = """import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if "google.colab" in sys.modules:  # Colab: install this project's helpers
    %pip install -q "helpers @ git+https://github.com/someone/old"

import keras
"""


def test_generator_replaces_the_old_colab_lines_then_keeps_the_block_current():
    path = Path("notebooks/03a_new.ipynb")
    new = updated_setup_source(OLD_SETUP, path)
    head, tail = OLD_SETUP.split('if "google.colab"')[0], "\nimport keras\n"
    assert new == f"{head}{install_block()}\n{tail}"
    assert updated_setup_source(new, path) == new  # idempotent
    stale = new.replace(install_source(), "helpers @ git+https://github.com/someone/old")
    assert updated_setup_source(stale, path) == new


def test_generator_leaves_a_cell_without_install_lines_and_rejects_half_a_block():
    assert updated_setup_source("x = 1", Path("n.ipynb")) == "x = 1"
    with pytest.raises(NotebookIndexError, match="exactly one"):
        updated_setup_source(f"{INSTALL_START}\nx = 1\n", Path("n.ipynb"))
