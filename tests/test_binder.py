"""binder/, checked offline (mybinder.org cannot be reached from CI): the image installs the
tested requirements.txt, with tensorflow-cpu for tensorflow, and postBuild installs the package."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"

pytestmark = pytest.mark.versionless


def requirement_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def test_binder_requirements_are_requirements_txt_with_tensorflow_cpu():
    """requirements.txt installs TensorFlow and Keras through the package's `pinned` extra
    (``-e .[pinned]``); Binder's postBuild installs the package without dependencies, so
    binder/requirements.txt names those pins itself, with tensorflow-cpu for tensorflow."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pinned = re.search(r"^pinned = \[(.*)\]$", pyproject, flags=re.MULTILINE).group(1)
    expected = [re.sub(r"^tensorflow==", "tensorflow-cpu==", pin)
                for pin in re.findall(r'"([^"]+)"', pinned)]
    expected += [line for line in requirement_lines(ROOT / "requirements.txt")
                 if not line.startswith("-e .")]
    assert requirement_lines(BINDER / "requirements.txt") == expected


def test_postbuild_installs_the_package_without_dependencies():
    postbuild = BINDER / "postBuild"
    assert os.access(postbuild, os.X_OK), "repo2docker runs postBuild only if it is executable"
    commands = requirement_lines(postbuild)
    assert commands[0] == "set -e"
    # --no-deps: pyproject.toml names `tensorflow`, which would pull a second TensorFlow next to
    # tensorflow-cpu; helpers.notebook.environment accepts tensorflow-cpu as TensorFlow.
    assert "pip install --no-deps -e ." in commands


def test_runtime_is_the_tested_python():
    assert (BINDER / "runtime.txt").read_text(encoding="utf-8").strip() == "python-3.11"
