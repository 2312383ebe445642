"""The Setup cell's generated install block, run as Colab runs it, in a fresh virtual environment.

The environment already holds TensorFlow and Keras at the oldest supported versions
(requirements-oldest.txt), as Colab holds its own: older than the pins, inside the range. A
stand-in ``google.colab`` module makes the block take its hosted path, and a local copy of the
package replaces the GitHub requirement. The block must install helpers and the missing packages,
and leave TensorFlow and Keras exactly as they were (same version, same files). Before that, the
same block without ``google.colab`` (a notebook downloaded alone) must stop with a message that
says what to install.

Takes a few minutes (pip installs TensorFlow into the new environment); deselect with
``-m "not venv"``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.tooling.notebook_index import install_block

pytestmark = pytest.mark.venv

ROOT = Path(__file__).resolve().parent.parent
# The packages the fresh environment starts with: the oldest supported TensorFlow and Keras, and
# IPython to run the block's %pip line (Colab has all three).
PREINSTALLED = ("tensorflow", "keras")


def oldest_pins() -> dict[str, str]:
    text = (ROOT / "requirements-oldest.txt").read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.MULTILINE))


def run(command, cwd, env=None):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def dist_info(venv: Path, name: str) -> list[Path]:
    return sorted(venv.glob(f"lib/python*/site-packages/{name}-*.dist-info"))


@pytest.fixture(scope="module")
def colab_venv(tmp_path_factory):
    """A new virtual environment holding only TensorFlow, Keras (oldest supported) and IPython."""
    venv = tmp_path_factory.mktemp("colab") / "venv"
    created = run([sys.executable, "-m", "venv", str(venv)], cwd=venv.parent)
    assert created.returncode == 0, created.stderr
    pins = oldest_pins()
    specs = [f"{name}=={pins[name]}" for name in PREINSTALLED] + ["ipython"]
    installed = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *specs],
                    cwd=venv.parent)
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.fixture
def package_copy(tmp_path):
    """The helpers package as GitHub would serve it (pyproject.toml and helpers/), so that pip
    builds in a temporary folder rather than in the working tree."""
    source = tmp_path / "tape-vs-fit"
    source.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", source)
    shutil.copytree(ROOT / "helpers", source / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return source


def run_block(venv: Path, folder: Path, preamble: str, block: str):
    """Run `block` with IPython (for the %pip line) in `folder`, away from the checkout."""
    script = folder / "setup.ipy"
    script.write_text(f"import os\nimport sys\n{preamble}\n{block}\n", encoding="utf-8")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "TAPE_VS_FIT_SMOKE")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return run([str(venv / "bin" / "ipython"), "--quick", "--no-banner", str(script)],
               cwd=folder, env=env)


def test_downloaded_alone_says_what_to_install(colab_venv, tmp_path):
    result = run_block(colab_venv, tmp_path, "", install_block())
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ModuleNotFoundError" in output
    assert 'pip install "tape-vs-fit @ git+https://github.com/' in output, output[-2000:]


def test_colab_installs_what_is_missing_and_keeps_tensorflow(colab_venv, package_copy, tmp_path):
    python = str(colab_venv / "bin" / "python")
    before = {name: dist_info(colab_venv, name) for name in PREINSTALLED}
    assert all(len(paths) == 1 for paths in before.values()), before
    stamps = {name: paths[0].joinpath("RECORD").stat() for name, paths in before.items()}
    for name in ("tape_vs_fit", "pandas", "scikit_learn", "matplotlib"):
        assert not dist_info(colab_venv, name), f"{name} should be missing before the block runs"

    fake = tmp_path / "fake"  # a stand-in for Colab's own google.colab module
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "colab" / "__init__.py").write_text("", encoding="utf-8")
    preamble = f"sys.path.insert(0, {str(fake)!r})\nimport google.colab  # noqa: F401"
    result = run_block(colab_venv, tmp_path, preamble,
                       install_block(source=f"tape-vs-fit @ {package_copy.as_uri()}"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]

    pins = oldest_pins()
    # TensorFlow and Keras: the same distributions, not reinstalled (a reinstall rewrites RECORD).
    for name in PREINSTALLED:
        after = dist_info(colab_venv, name)
        assert after == before[name], f"{name} was replaced: {before[name]} -> {after}"
        record = after[0].joinpath("RECORD").stat()
        assert (record.st_ino, record.st_mtime_ns) == (stamps[name].st_ino,
                                                       stamps[name].st_mtime_ns)
        assert after[0].name.startswith(f"{name}-{pins[name]}.")
    installing = [line for line in output.splitlines() if line.startswith("Installing")]
    assert installing and not re.search(r"\b(tensorflow|keras)\b", installing[0]), installing
    # The versions in use are named, with what is exact only on the pins.
    assert f"Using tensorflow {pins['tensorflow']}, keras {pins['keras']}." in output
    # What was missing is now there, within the range.
    check = run([python, "-c",
                 "import helpers.notebook.environment as e; e.check_environment(False)"],
                cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "WARNING" not in check.stdout
    for name in ("tape_vs_fit", "pandas", "scikit_learn", "scipy", "matplotlib"):
        assert dist_info(colab_venv, name), f"{name} was not installed"
