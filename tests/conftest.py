"""Shared fixtures: small, seeded slices of the real (verified) MNIST.

Everything here is kept small so that the whole suite runs in well under three minutes on two
cores: MNIST is read once per session, training tests use a few hundred images.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers.data import load_mnist  # noqa: E402

SMALL_TRAIN = 640
SMALL_VAL = 160


@pytest.fixture(scope="session")
def mnist_small():
    """800 stratified training images (seed 0): float32 images, one-hot float32 labels."""
    x, y = load_mnist("train", subset=SMALL_TRAIN + SMALL_VAL, seed=0)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@pytest.fixture(scope="session")
def small_split(mnist_small):
    """(x_train, y_train), (x_val, y_val): 640 + 160 images, one-hot labels."""
    x, y = mnist_small
    return (x[:SMALL_TRAIN], y[:SMALL_TRAIN]), (x[SMALL_TRAIN:], y[SMALL_TRAIN:])


@pytest.fixture(scope="session")
def small_split_sparse(small_split):
    """The same images with uint8 class-id labels (what load_mnist(one_hot=False) gives)."""
    (x_train, y_train), (x_val, y_val) = small_split
    return ((x_train, y_train.argmax(-1).astype(np.uint8)),
            (x_val, y_val.argmax(-1).astype(np.uint8)))


def max_difference(a, b) -> float:
    """Largest |a[i] - b[i]| over two equally shaped lists of arrays (weights, variables,
    History columns), computed in float64. Tests import it: ``from conftest import
    max_difference``."""
    a = [np.asarray(x, dtype=np.float64) for x in a]
    b = [np.asarray(y, dtype=np.float64) for y in b]
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def folder_snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`, to show that nothing in it was
    written, made or removed. Tests import it: ``from conftest import folder_snapshot``."""
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}
