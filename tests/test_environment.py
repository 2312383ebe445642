"""helpers.notebook.environment, the check the Setup cells run before importing anything heavy: the
range it enforces is pyproject.toml's, whose ends are the two tested requirement files; it installs
only what is missing, and never installs over TensorFlow or Keras."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from helpers.notebook import environment

ROOT = Path(__file__).resolve().parent.parent


def pins(name: str) -> dict[str, str]:
    text = (ROOT / name).read_text(encoding="utf-8")
    return {key.lower(): value
            for key, value in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.MULTILINE)}


def declared() -> list[Requirement]:
    """pyproject.toml's dependencies (read with a regex: tomllib needs Python 3.11)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    listed = re.search(r"^dependencies = \[(.*?)^\]", text, flags=re.MULTILINE | re.DOTALL)
    return [Requirement(spec) for spec in re.findall(r'"([^"]+)"', listed.group(1))]


@pytest.mark.pinned
def test_pins_come_from_the_installed_package_and_are_installed():
    """The pins are pyproject.toml's `pinned` extra, which requirements.txt installs: the
    installed TensorFlow, Keras and JAX are those versions (a stale .venv fails here)."""
    pinned = environment.pinned_versions()
    assert set(pinned) == {"tensorflow", "keras", "jax"}
    assert "-e .[pinned]" in (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert {name: environment.installed_version(name) for name in pinned} == pinned


def test_installed_metadata_is_pyproject():
    """The range check reads the installed package's metadata; a stale install fails here
    (rerun `bash scripts/setup.sh`)."""
    assert sorted(map(str, environment.requirements())) == sorted(map(str, declared()))


@pytest.mark.versionless
@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_range_ends_are_the_tested_requirement_files(requirement):
    """requirements.txt pins the newest tested versions, requirements-oldest.txt the lower
    bounds (CI runs the unit tests with each), and both lie inside pyproject.toml's range."""
    newest = {**pins("requirements.txt"), **environment.pinned_versions()}
    oldest = pins("requirements-oldest.txt")
    assert requirement.specifier.contains(newest[requirement.name])
    assert requirement.specifier.contains(oldest[requirement.name])
    lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    assert len(lower) == 1, f"{requirement}: needs one lower bound (>=)"
    bound = Version(lower[0]).release
    assert Version(oldest[requirement.name]).release[:len(bound)] == bound, (
        f"requirements-oldest.txt should pin {requirement.name} at its lower bound {lower[0]}")


@pytest.fixture
def fake_installed(monkeypatch):
    """Pretend these distributions are installed; record pip calls instead of running pip."""
    installed = {"numpy": "2.4.6", "scikit-learn": "1.9.1", "scipy": "1.17.1", "pandas": "3.1.1",
                 "matplotlib": "3.11.2", "keras": "3.15.1", "tensorflow": "2.21.0"}
    calls = []

    def version(name):
        for candidate in environment.ALIASES.get(name, (name,)):
            if candidate in installed:
                return installed[candidate]
        return None

    def check_call(command):
        calls.append(command)
        for spec in command[5:]:
            installed[Requirement(spec).name] = "9.9"
        return 0

    monkeypatch.setattr(environment, "installed_version", version)
    monkeypatch.setattr(environment.subprocess, "check_call", check_call)
    return installed, calls


@pytest.mark.versionless
def test_pinned_environment_is_quiet(fake_installed, capsys):
    installed, calls = fake_installed
    assert environment.check_environment(install_missing=True) == installed
    assert calls == [] and capsys.readouterr().out == ""


@pytest.mark.versionless
def test_outside_the_range_is_kept_with_a_message(fake_installed, capsys):
    installed, calls = fake_installed
    installed.update(tensorflow="2.23.0", keras="3.4.1")
    versions = environment.check_environment(install_missing=True)
    out = capsys.readouterr().out
    assert calls == [], "nothing installed over TensorFlow or Keras"
    assert versions["tensorflow"] == "2.23.0" and versions["keras"] == "3.4.1"
    assert "tensorflow 2.23.0 is outside the tested range <2.22,>=2.18 (kept, not replaced)" in out
    assert "keras 3.4.1 is outside the tested range" in out
    assert "Using tensorflow 2.23.0, keras 3.4.1. Bit-for-bit" in out


@pytest.mark.versionless
def test_missing_packages_are_installed_on_a_hosted_notebook_only(fake_installed, capsys):
    installed, calls = fake_installed
    del installed["pandas"], installed["scipy"]
    with pytest.raises(ModuleNotFoundError, match=r'pip install "scipy>=1\.13" "pandas>=2\.2"'):
        environment.check_environment(install_missing=False)
    assert calls == []
    environment.check_environment(install_missing=True)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "scipy>=1.13", "pandas>=2.2"]]
    assert "Installing what is missing: scipy>=1.13, pandas>=2.2" in capsys.readouterr().out


@pytest.mark.versionless
def test_tensorflow_cpu_counts_as_tensorflow(fake_installed):
    installed, calls = fake_installed
    installed["tensorflow-cpu"] = installed.pop("tensorflow")  # as on Binder
    assert environment.check_environment(install_missing=True)["tensorflow"] == "2.21.0"
    assert calls == []


@pytest.mark.versionless
def test_missing_tensorflow_is_installed_within_the_range(fake_installed):
    installed, calls = fake_installed
    del installed["tensorflow"]
    environment.check_environment(install_missing=True)
    assert calls[0][5:] == ["tensorflow<2.22,>=2.18"]


@pytest.mark.versionless
def test_hosted_means_colab_or_kaggle(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert not environment.hosted()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert environment.hosted()
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert environment.hosted()


@pytest.mark.versionless
def test_importable_without_numpy_or_tensorflow():
    """The Setup cell imports it before the packages it checks may exist."""
    code = ("import sys; sys.modules.update(numpy=None, tensorflow=None, keras=None); "
            "import helpers.notebook.environment")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
