"""Real MNIST, found offline when possible and verified before use.

`load_mnist` returns images as float32 in [0, 1] with shape (N, 28, 28, 1) and labels one-hot
encoded as float32 (N, 10) -- what the article's `categorical_crossentropy` expects -- or as
uint8 class ids with ``one_hot=False``.

Splits: ``"train"`` is the 60,000 training images, the pool that cross-validation splits into folds
(as the article did); ``"test"`` is the 10,000 held-out test images, never used for model choice;
``"all"`` is both, 70,000 images.

The file is looked for, in order:
1. an explicit ``path`` argument, else the ``MNIST_PATH`` environment variable;
2. the copy vendored in this repository, ``data/mnist.npz``;
3. Keras' cache, ``$KERAS_HOME/datasets/mnist.npz`` (``~/.keras/datasets/mnist.npz``);
4. a download with ``keras.utils.get_file`` from Keras' own URL, checked against Keras' file hash.

Whatever the source, each array is checked against the SHA-256 of the original MNIST arrays
(data/README.md) before it is used: a truncated, corrupted or foreign file raises `MnistDataError`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

ENV_VAR = "MNIST_PATH"
VENDORED_PATH = Path(__file__).resolve().parent.parent / "data" / "mnist.npz"
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_FILE_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

# SHA-256 of each array's raw bytes, from data/README.md (shared/data/PROVENANCE.md).
ARRAY_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
SPLITS = ("train", "test", "all")
NUM_CLASSES = 10

_FIX = (
    "Restore the original file (git checkout data/mnist.npz), point MNIST_PATH at a good copy, "
    "or delete the file so that Keras' own copy is used."
)


class MnistDataError(RuntimeError):
    """The MNIST file is missing, unreadable, or not the real MNIST."""


def keras_cache_path() -> Path:
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(keras_home) / "datasets" / "mnist.npz"


def locate_mnist(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the path of the MNIST file to use (see the module docstring for the order)."""
    explicit = path if path is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        # An explicit choice is never silently replaced by another source.
        explicit = Path(explicit).expanduser()
        if not explicit.is_file():
            source = "path argument" if path is not None else f"{ENV_VAR} environment variable"
            raise MnistDataError(
                f"MNIST file {explicit} (from the {source}) does not exist. "
                f"Fix the path, or unset it to use {VENDORED_PATH} or Keras' copy."
            )
        return explicit
    for candidate in (VENDORED_PATH, keras_cache_path()):
        if candidate.is_file():
            return candidate
    if not download:
        raise MnistDataError(
            f"No MNIST file found at {VENDORED_PATH} or {keras_cache_path()}, and download=False."
        )
    return _download_to_keras_cache()


def _download_to_keras_cache() -> Path:
    """Download with Keras into a temporary folder, verify, then move into the cache in one step,
    so that an interrupted or bad download never leaves a file that later runs would trust."""
    import keras

    target = keras_cache_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mnist-download-") as tmp:
        try:
            downloaded = keras.utils.get_file(
                "mnist.npz", origin=KERAS_ORIGIN, file_hash=KERAS_FILE_SHA256, cache_dir=tmp,
                cache_subdir="",
            )
        except Exception as error:
            raise MnistDataError(
                f"MNIST is not in {VENDORED_PATH} nor {keras_cache_path()}, and downloading it "
                f"from {KERAS_ORIGIN} failed ({error}). Put mnist.npz at one of those places or "
                f"set {ENV_VAR}."
            ) from error
        _read_verified(Path(downloaded))
        shutil.move(downloaded, target)
    return target


def _read_verified(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = sorted(set(ARRAY_SHA256) - set(archive.files))
            if missing:
                raise MnistDataError(
                    f"{path} is not an MNIST file: it lacks {', '.join(missing)}. {_FIX}"
                )
            arrays = {key: archive[key] for key in ARRAY_SHA256}
    except MnistDataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise MnistDataError(
            f"{path} cannot be read as an .npz file ({type(error).__name__}: {error}); it is "
            f"truncated or corrupted. {_FIX}"
        ) from error
    for key, expected in ARRAY_SHA256.items():
        digest = hashlib.sha256(np.ascontiguousarray(arrays[key]).tobytes()).hexdigest()
        if digest != expected:
            raise MnistDataError(
                f"{path}: array {key} (shape {arrays[key].shape}, dtype {arrays[key].dtype}) "
                f"does not match the real MNIST (SHA-256 {digest[:12]}..., expected "
                f"{expected[:12]}...). {_FIX}"
            )
    return arrays


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` samples with the class proportions of `labels` (seeded)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    chosen, _ = train_test_split(
        np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed
    )
    return np.sort(chosen)


def load_mnist(
    split: str = "train",
    subset: int | None = None,
    seed: int = 0,
    one_hot: bool = True,
    path: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) float32 in [0, 1] and labels (one-hot float32, or uint8 ids).

    `subset`, if given, keeps a seeded, stratified sample of that many images from the split
    (for quick runs); the same (subset, seed) always gives the same images.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; use one of {SPLITS}")
    arrays = _read_verified(locate_mnist(path))
    parts = ("train", "test") if split == "all" else (split,)
    images = np.concatenate([arrays[f"x_{part}"] for part in parts])
    labels = np.concatenate([arrays[f"y_{part}"] for part in parts])
    if subset is not None:
        keep = stratified_subset(labels, subset, seed)
        images, labels = images[keep], labels[keep]
    images = (images.astype(np.float32) / 255.0)[..., np.newaxis]
    if one_hot:
        labels = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    return images, labels


def class_ids(labels: np.ndarray) -> np.ndarray:
    """Class ids from one-hot or integer labels."""
    labels = np.asarray(labels)
    return labels.argmax(axis=-1) if labels.ndim == 2 and labels.shape[-1] > 1 else labels.ravel()
