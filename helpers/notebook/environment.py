"""Check the packages a notebook needs before it imports them, without replacing any.

Every notebook's Setup cell calls `check_environment` in its generated install block (see
`helpers.tooling.notebook_index.install_block`). On a hosted notebook (Colab, Kaggle) the block
first installs this package with ``--no-deps``; `check_environment` then pip-installs only the
requirements that are *missing*. A TensorFlow or Keras that is already
there is kept even when it lies outside the tested range (replacing Colab's TensorFlow pulls
hundreds of MB and breaks Colab's other packages); a clear message says so instead.

The supported range is the one declared in pyproject.toml (read from the installed package's
metadata, so it has one source). CI tests its two ends: the pins (pyproject.toml's `pinned`
extra, which requirements.txt installs; `pinned_versions`) and requirements-oldest.txt (the lower
bounds); the unit tests, including the bit-for-bit equality of fit() and the matched loop on CPU,
pass at both. Exact only on the pins: the numbers committed under results/. Versions between the
two ends are not tested.

This module uses only the standard library and ``packaging`` (a dependency of ipykernel, so
present in every Jupyter kernel): it must work before numpy, TensorFlow or Keras are installed.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import Version

DISTRIBUTION = "tape-vs-fit"  # the pip name of the package that brings `helpers`
PINNED_EXTRA = "pinned"  # its extra that pins the tested TensorFlow and Keras
# Distributions that provide the `tensorflow` module under another name (Binder uses the CPU one).
ALIASES = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos")}
KEPT_AS_IS = ("tensorflow", "keras")  # never installed over an existing version


def requirements(distribution: str = DISTRIBUTION) -> list[Requirement]:
    """The installed package's dependencies (pyproject.toml's list), without extras."""
    found = [Requirement(text) for text in metadata.requires(distribution) or []]
    return [requirement for requirement in found if requirement.marker is None]


def pinned_versions(distribution: str = DISTRIBUTION) -> dict[str, str]:
    """The TensorFlow and Keras versions every equality was shown with: the package's `pinned`
    extra, read from its installed metadata (so a hosted notebook knows them too)."""
    pins = {}
    for text in metadata.requires(distribution) or []:
        requirement = Requirement(text)
        if requirement.marker and requirement.marker.evaluate({"extra": PINNED_EXTRA}):
            (pin,) = requirement.specifier
            pins[requirement.name] = pin.version
    return pins


def installed_version(name: str) -> str | None:
    """Version of the installed distribution `name` (or of one of its aliases), else None."""
    for candidate in ALIASES.get(name, (name,)):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


def hosted() -> bool:
    """Whether this kernel runs on Colab or Kaggle (the install block's own test, repeated)."""
    return "google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def check_environment(install_missing: bool | None = None,
                      distribution: str = DISTRIBUTION) -> dict:
    """Compare the installed packages with `distribution`'s requirements; return their versions.

    - missing packages: pip-installed within the range when `install_missing` (by default: on a
      hosted notebook), otherwise a ModuleNotFoundError saying what to install;
    - installed packages outside the range: kept, with a printed message naming the range.
    """
    if install_missing is None:
        install_missing = hosted()
    missing, outside, versions = [], [], {}
    for requirement in requirements(distribution):
        version = installed_version(requirement.name)
        if version is None:
            missing.append(requirement)
        else:
            versions[requirement.name] = version
            if not requirement.specifier.contains(Version(version), prereleases=True):
                outside.append((requirement, version))

    if missing:
        specs = [str(requirement) for requirement in missing]
        if not install_missing:
            quoted = " ".join(f'"{spec}"' for spec in specs)
            raise ModuleNotFoundError(
                f"{distribution} needs {', '.join(r.name for r in missing)}: pip install {quoted}"
            )
        print(f"Installing what is missing: {', '.join(specs)}")
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *specs])
        importlib.invalidate_caches()
        for requirement in missing:
            versions[requirement.name] = installed_version(requirement.name)

    for requirement, version in outside:
        action = "kept, not replaced" if requirement.name in KEPT_AS_IS else "kept"
        print(f"WARNING: {requirement.name} {version} is outside the tested range "
              f"{requirement.specifier} ({action}). If a cell fails, install a tested version "
              f'(pip install "{requirement}") and restart the kernel.')
    pinned = pinned_versions(distribution)
    off_pins = {name: versions.get(name) for name, pin in pinned.items()
                if versions.get(name) not in (None, pin)}
    if off_pins:
        using = ", ".join(f"{name} {version}" for name, version in off_pins.items())
        pins = ", ".join(f"{name} {pin}" for name, pin in pinned.items())
        print(f"Using {using}. Bit-for-bit equalities were checked with {pins}; other versions "
              "may differ in the last digits.")
    return versions
