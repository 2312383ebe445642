"""The generated Setup cell, run as Colab runs it, in a fresh virtual environment.

The environment already holds TensorFlow and Keras at the oldest supported versions
(requirements-oldest.txt), as Colab holds its own: older than the pins, inside the range. They are
not installed again: the environment gets TensorFlow, Keras and what they depend on, and nothing
else, hard-linked (or copied) file by file from .venv-oldest (which `scripts/setup.sh --oldest`
makes, or finds up to date), plus IPython from pip. The variable Colab sets in every kernel
(``COLAB_RELEASE_TAG``) makes the cell take its hosted path, and a local copy of the package
replaces the GitHub requirement. The cell must install helpers and the missing packages, leave
TensorFlow and Keras exactly as they were (same version, same files), and, as the Setup cell of a
notebook whose sections need a newer Keras than this one, say so with the command that fixes it.
Before that, the same cell without the variable (a notebook downloaded alone) must stop with one
line that says what to install.

Takes a minute or two (pip installs pandas, scikit-learn, scipy, matplotlib; more the first time,
when it makes .venv-oldest); deselect with ``-m "not venv"``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.compat import KERAS_GATES
from helpers.notebook.quiet_tensorflow import CPP_LOG_LINE
from helpers.tooling.notebook_index import setup_source

pytestmark = pytest.mark.venv

ROOT = Path(__file__).resolve().parent.parent
# The packages the fresh environment starts with: the oldest supported TensorFlow and Keras (and
# what they depend on), and IPython to run the block's %pip line (Colab has all of them).
PREINSTALLED = ("tensorflow", "keras")
# pip's --compile off (pip reads PIP_<OPTION>): byte-compiling every module of scipy, pandas,
# scikit-learn and matplotlib is 12 of the install's 19 CPU seconds, and nothing here checks it.
NO_BYTE_COMPILING = {"PIP_COMPILE": "false"}


def oldest_pins() -> dict[str, str]:
    text = (ROOT / "requirements-oldest.txt").read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.MULTILINE))


def run(command, cwd, env=None):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def dist_info(venv: Path, name: str) -> list[Path]:
    return sorted(venv.glob(f"lib/python*/site-packages/{name}-*.dist-info"))


# Run by .venv-oldest's Python: the installed distributions `names` need, with their own names
# (markers evaluated, extras left out), each with its site-packages folder and its RECORD's files.
CLOSURE = """
import json, sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
todo, seen, found = list(sys.argv[1:]), set(), []
while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
        continue
    seen.add(name)
    dist = distribution(name)
    found.append({"name": name, "root": str(dist.locate_file("")),
                  "files": [str(path) for path in dist.files or ()]})
    for spec in dist.requires or ():
        requirement = Requirement(spec)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            todo.append(requirement.name)
print(json.dumps(found))
"""


def oldest_venv() -> Path:
    """.venv-oldest, with TensorFlow and Keras at the oldest pins; made by `scripts/setup.sh
    --oldest` if it does not hold them yet (.ci/run makes it before the tests)."""
    venv, pins = ROOT / ".venv-oldest", oldest_pins()
    if not all(any(venv.glob(f"lib/python*/site-packages/{name}-{pins[name]}.dist-info"))
               for name in PREINSTALLED):
        made = run(["bash", str(ROOT / "scripts" / "setup.sh"), "--oldest"], cwd=ROOT)
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]
    return venv


def link_distributions(source_python: Path, names, site_packages: Path) -> list[str]:
    """Put the distributions `names` need, as installed for `source_python`, into
    `site_packages`: every file their RECORDs list there (hard links where possible; scripts in
    bin/, which name the other Python, are left out). Returns the distributions' names."""
    listed = run([str(source_python), "-I", "-c", CLOSURE, *names], cwd=site_packages)
    assert listed.returncode == 0, listed.stderr[-3000:]
    distributions = json.loads(listed.stdout)
    for dist in distributions:
        root = Path(dist["root"])
        for name in dist["files"]:
            source, target = root / name, site_packages / name
            if name.startswith("..") or not source.is_file() or target.exists():
                continue  # bin/ scripts; a .pyc never written; a file a RECORD lists twice
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)  # pip replaces files, never writes into them
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
                shutil.copy2(source, target)  # another file system
    return [dist["name"] for dist in distributions]


@pytest.fixture(scope="module")
def colab_venv(tmp_path_factory):
    """A new virtual environment holding only TensorFlow, Keras (oldest supported, with what they
    depend on, from .venv-oldest) and IPython (from pip)."""
    source_python = oldest_venv() / "bin" / "python"
    venv = tmp_path_factory.mktemp("colab") / "venv"
    created = run([str(source_python), "-m", "venv", str(venv)], cwd=venv.parent)
    assert created.returncode == 0, created.stderr
    site_packages = next(venv.glob("lib/python*/site-packages"))
    linked = link_distributions(source_python, PREINSTALLED, site_packages)
    assert set(PREINSTALLED) <= set(linked), linked
    installed = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "ipython"],
                    cwd=venv.parent, env={**os.environ, **NO_BYTE_COMPILING})
    assert installed.returncode == 0, installed.stderr
    check = run([str(venv / "bin" / "python"), "-I", "-c", "import keras, tensorflow"],
                cwd=venv.parent, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert check.returncode == 0, check.stderr[-3000:]
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


def run_cell(venv: Path, folder: Path, cell: str, hosted: bool):
    """Run `cell` with IPython (for the %pip line) in `folder`, away from the checkout; `hosted`:
    with the variable Colab sets."""
    script = folder / "setup.ipy"
    script.write_text(f"{cell}\n", encoding="utf-8")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "TAPE_VS_FIT_SMOKE", "COLAB_RELEASE_TAG",
                          "KAGGLE_KERNEL_RUN_TYPE")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(NO_BYTE_COMPILING)
    if hosted:
        env["COLAB_RELEASE_TAG"] = "release-colab-stand-in"
    return run([str(venv / "bin" / "ipython"), "--quick", "--no-banner", str(script)],
               cwd=folder, env=env)


def test_downloaded_alone_says_what_to_install(colab_venv, tmp_path):
    result = run_cell(colab_venv, tmp_path, setup_source(), hosted=False)
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # IPython's colours
    assert ('SystemExit: This notebook needs its helpers package: '
            'pip install "tape-vs-fit @ git+https://github.com/') in output, output[-2000:]
    assert "Traceback" not in output and "setup_notebook" not in output, output[-2000:]


def test_colab_installs_what_is_missing_and_keeps_tensorflow(colab_venv, package_copy, tmp_path):
    python = str(colab_venv / "bin" / "python")
    before = {name: dist_info(colab_venv, name) for name in PREINSTALLED}
    assert all(len(paths) == 1 for paths in before.values()), before
    stamps = {name: paths[0].joinpath("RECORD").stat() for name, paths in before.items()}
    for name in ("tape_vs_fit", "pandas", "scikit_learn", "matplotlib"):
        assert not dist_info(colab_venv, name), f"{name} should be missing before the block runs"

    cell = setup_source(["strategy"], source=f"tape-vs-fit @ {package_copy.as_uri()}")
    result = run_cell(colab_venv, tmp_path, cell, hosted=True)
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
    # The versions in use are named, with what is exact only on the pins; the Keras the
    # distributed loop needs (KERAS_GATES) is named with the command that installs it alone.
    assert f"Using tensorflow {pins['tensorflow']}, keras {pins['keras']}." in output
    assert (f"TensorFlow {pins['tensorflow']} · Keras {pins['keras']} (tensorflow backend) · "
            in output)
    needed = ".".join(map(str, KERAS_GATES["strategy"].oldest))
    assert (f"Keras {pins['keras']} is older than the {needed} this notebook needs for "
            f"{KERAS_GATES['strategy'].what}: ") in output, output[-3000:]
    assert f'%pip install -q "keras>={needed},<' in output
    assert not [line for line in result.stderr.splitlines() if CPP_LOG_LINE.match(line)
                or "absl::InitializeLog" in line], result.stderr[-3000:]
    # What was missing is now there, within the range.
    check = run([python, "-c",
                 "import helpers.notebook.environment as e; e.check_environment(False)"],
                cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "WARNING" not in check.stdout
    for name in ("tape_vs_fit", "pandas", "scikit_learn", "scipy", "matplotlib"):
        assert dist_info(colab_venv, name), f"{name} was not installed"
