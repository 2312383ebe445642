"""helpers.notebook.environment, the check the Setup cells run before importing anything heavy: the
range it enforces is pyproject.toml's, whose ends are the two tested requirement files; it installs
only what is missing, and never installs over TensorFlow or Keras. And helpers.notebook.setup:
what the Setup cell says about the versions a notebook needs, and the one line a section that
needs a newer Keras prints instead of running, both from the table of gates (compat.KERAS_GATES)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from helpers import compat
from helpers.notebook import environment, setup
from helpers.tooling.notebook_index import keras_gates_used, notebook_paths, setup_cell

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
    for name in environment.HOSTED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not environment.hosted()
    for name in environment.HOSTED_VARIABLES:  # COLAB_RELEASE_TAG, KAGGLE_KERNEL_RUN_TYPE
        monkeypatch.setenv(name, "set by the host")
        assert environment.hosted()
        monkeypatch.delenv(name)


@pytest.mark.versionless
def test_importable_without_numpy_or_tensorflow():
    """The Setup cell imports it before the packages it checks may exist."""
    code = ("import sys; sys.modules.update(numpy=None, tensorflow=None, keras=None); "
            "import helpers.notebook.environment")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def dotted(release) -> str:
    return ".".join(map(str, release))


def setup_arguments(path) -> list[str]:
    """The gates a notebook's Setup cell passes to setup_notebook, as written in the cell."""
    call = setup_cell(nbformat.read(path, as_version=4)).source.splitlines()[-1]
    gates = re.search(r"keras_gates=\[([^\]]*)\]", call)
    return re.findall(r'"(\w+)"', gates.group(1)) if gates else []


@pytest.mark.parametrize("path", notebook_paths(ROOT), ids=lambda p: p.name)
def test_setup_message_at_the_oldest_keras_follows_the_gate_table(path):
    """What each notebook's Setup cell prints with the oldest supported Keras: with gates whose
    Keras is newer, the newest such Keras, what needs it and the %pip line that installs it
    within pyproject.toml's range; without, just the oldest TensorFlow and Keras."""
    gates = setup_arguments(path)
    assert gates == keras_gates_used(nbformat.read(path, as_version=4))
    oldest = pins("requirements-oldest.txt")
    declared_ranges = {requirement.name: requirement for requirement in declared()}
    message = setup.needs_message(gates, oldest["keras"], compat.KERAS_GATES, declared_ranges)
    newer = {name: compat.KERAS_GATES[name] for name in gates
             if Version(oldest["keras"]).release[:2] < compat.KERAS_GATES[name].oldest}
    if not newer:
        tensorflow, keras = (dotted(Version(oldest[name]).release[:2])
                             for name in ("tensorflow", "keras"))
        assert message == (f"This notebook needs TensorFlow {tensorflow} or newer and Keras "
                           f"{keras} or newer.")
        return
    needed = max(gate.oldest for gate in newer.values())
    upper = [str(spec) for spec in declared_ranges["keras"].specifier if spec.operator == "<"]
    assert message.startswith(f"Keras {oldest['keras']} is older than the {dotted(needed)} this "
                              "notebook needs for "), message
    assert all(gate.what in message for gate in newer.values() if gate.oldest == needed)
    assert f'%pip install -q "keras>={dotted(needed)},{upper[0]}"' in message
    assert "restart the kernel" in message


def test_setup_message_at_the_pinned_keras_names_what_needs_it():
    declared_ranges = {requirement.name: requirement for requirement in declared()}
    message = setup.needs_message(["strategy"], "3.15.1", compat.KERAS_GATES, declared_ranges)
    assert message == ("This notebook needs TensorFlow 2.18 or newer and Keras 3.15 or newer for "
                       f"{compat.KERAS_GATES['strategy'].what} (Keras 3.5 for the rest).")


@pytest.mark.parametrize("gate", sorted(compat.KERAS_GATES))
def test_a_section_that_needs_a_newer_keras_prints_one_line(gate, capsys):
    """keras_allows with the installed Keras: True and silent where compat.supports(gate), else
    False and one line naming the section, the gate's Keras, what and why, and the committed
    result (at the oldest versions CI runs every notebook, so each such line)."""
    allowed = setup.keras_allows(gate, shows="the section's result", committed="the stored one")
    printed = capsys.readouterr().out
    assert allowed == compat.supports(gate)
    if allowed:
        assert printed == ""
        return
    needed = compat.KERAS_GATES[gate]
    assert printed == (f"Not run with Keras {compat.keras.__version__}: the section's result. It "
                       f"needs Keras {dotted(needed.oldest)} or newer for {needed.what}, because "
                       f"{needed.why}. Committed result: the stored one.\n")


def test_setup_notebook_refuses_a_gate_the_table_lacks():
    with pytest.raises(ValueError, match=r"unknown Keras gates \['strategi'\]"):
        setup.setup_notebook(keras_gates=["strategi"])


def test_readme_says_which_notebooks_skip_what_below_which_keras():
    """The supported-versions section of README.md: the %pip line, and one row per notebook that
    uses gates, with the newest Keras they need and the number of sections that need it."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Supported versions")[1]
    section = section.split("\n### ")[0]
    keras = {requirement.name: requirement for requirement in declared()}["keras"]
    for path in notebook_paths(ROOT):
        notebook = nbformat.read(path, as_version=4)
        gates = keras_gates_used(notebook)
        if not gates:
            continue
        needed = max(compat.KERAS_GATES[gate].oldest for gate in gates)
        sections = sum(cell.source.count("keras_allows(") for cell in notebook.cells
                       if cell.cell_type == "code")
        number = re.match(r"[0-9A-Z]+[a-z]?", path.stem).group(0)
        row = (f"| {number} | Keras {dotted(needed)} for "
               f"{'one section' if sections == 1 else f'{sections} sections'} |")
        assert row in section, f"README.md's supported versions lack the row {row!r}"
        assert setup.upgrade_command(keras, needed) in section
