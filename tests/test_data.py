"""helpers.data: the verified MNIST loader and the stratified subset."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import data
from helpers.data import MnistDataError, load_mnist, locate_mnist, stratified_subset

FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
VENDORED = data.VENDORED_PATH  # the real copy, before any test hides it
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def train_ids():
    """The full training split with uint8 class ids (one read of the vendored file)."""
    return load_mnist("train", one_hot=False)


@pytest.fixture
def no_local_mnist(monkeypatch, tmp_path):
    """Neither the vendored copy nor a Keras cache exists; KERAS_HOME is a fresh temp folder."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "VENDORED_PATH", tmp_path / "hidden" / "mnist.npz")
    keras_home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    return keras_home / "datasets" / "mnist.npz"


def _raises_naming(path: Path, match: str | None = None, **kwargs):
    """load_mnist(path=path) raises MnistDataError whose message names the path."""
    with pytest.raises(MnistDataError) as info:
        load_mnist(path=path, **kwargs)
    assert str(path) in str(info.value)
    if match is not None:
        assert match in str(info.value)
    return info.value


# --- what load_mnist returns ---------------------------------------------------------------------

def test_one_hot_float32_images_in_unit_range(mnist_small):
    x, y = mnist_small
    assert x.shape == (800, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (800, 10) and y.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    # Exactly one 1 per row, everything else 0.
    assert set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_array_equal(y.sum(axis=1), np.ones(800, dtype=np.float32))


def test_images_are_bytes_over_255(train_ids):
    x, _ = train_ids
    with np.load(VENDORED) as archive:
        raw = archive["x_train"][:5]
    np.testing.assert_array_equal(x[:5, ..., 0], raw.astype(np.float32) / 255.0)


def test_integer_labels(train_ids):
    x, y = train_ids
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.uint8
    assert y[:10].tolist() == FIRST_TRAIN_LABELS
    assert np.bincount(y, minlength=10).tolist() == TRAIN_CLASS_COUNTS


def test_one_hot_matches_integer_labels(train_ids):
    _, ids = train_ids
    _, one_hot = load_mnist("train", subset=500, seed=3)
    _, ids_subset = load_mnist("train", subset=500, seed=3, one_hot=False)
    np.testing.assert_array_equal(one_hot.argmax(axis=1), ids_subset)
    np.testing.assert_array_equal(data.class_ids(one_hot), ids_subset)


@pytest.mark.parametrize("split, size", [("test", 10000), ("all", 70000)])
def test_split_sizes(split, size):
    x, y = load_mnist(split, one_hot=False)
    assert x.shape == (size, 28, 28, 1)
    assert y.shape == (size,)
    if split == "test":
        assert np.bincount(y, minlength=10).tolist() == TEST_CLASS_COUNTS
    else:  # train first, then test
        expected = np.add(TRAIN_CLASS_COUNTS, TEST_CLASS_COUNTS).tolist()
        assert np.bincount(y, minlength=10).tolist() == expected
        assert y[:10].tolist() == FIRST_TRAIN_LABELS


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="validation"):
        load_mnist("validation")


def test_subset_is_seeded_and_stratified(train_ids):
    _, all_ids = train_ids
    x1, y1 = load_mnist("train", subset=300, seed=5, one_hot=False)
    x2, y2 = load_mnist("train", subset=300, seed=5, one_hot=False)
    x3, _ = load_mnist("train", subset=300, seed=6, one_hot=False)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    keep = stratified_subset(all_ids, 300, seed=5)
    np.testing.assert_array_equal(y1, all_ids[keep])


# --- checksums and damaged files -----------------------------------------------------------------

def test_vendored_file_verifies():
    arrays = data._read_verified(VENDORED)
    assert sorted(arrays) == sorted(data.ARRAY_SHA256)
    assert arrays["x_train"].shape == (60000, 28, 28) and arrays["x_train"].dtype == np.uint8
    assert arrays["y_test"].shape == (10000,)


def test_explicit_good_copy_is_used(tmp_path, monkeypatch):
    copy = tmp_path / "copy.npz"
    shutil.copyfile(VENDORED, copy)
    assert locate_mnist(copy) == copy
    monkeypatch.setenv(data.ENV_VAR, str(copy))
    assert locate_mnist() == copy
    _, y = load_mnist("test", one_hot=False)
    assert np.bincount(y, minlength=10).tolist() == TEST_CLASS_COUNTS


def test_truncated_copy(tmp_path):
    path = tmp_path / "truncated.npz"
    raw = VENDORED.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _raises_naming(path, "truncated or corrupted")


def test_changed_pixel(tmp_path):
    """A well-formed npz whose x_test differs from MNIST by one pixel."""
    with np.load(VENDORED) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["x_test"] = arrays["x_test"].copy()
    arrays["x_test"][0, 14, 14] ^= 1
    path = tmp_path / "one_pixel.npz"
    np.savez_compressed(path, **arrays)
    error = _raises_naming(path, "x_test")
    assert "x_train" not in str(error)  # the arrays before it are fine


def test_missing_array(tmp_path):
    path = tmp_path / "three_arrays.npz"
    np.savez(path, x_train=np.zeros(1), y_train=np.zeros(1), x_test=np.zeros(1))
    _raises_naming(path, "lacks y_test")


def test_not_a_zip_file(tmp_path):
    path = tmp_path / "mnist.npz"
    path.write_text("this is not an npz file\n")
    _raises_naming(path)


def test_zip_with_a_damaged_member(tmp_path):
    """Flip bytes inside the compressed data: the zip directory is intact, the data is not."""
    path = tmp_path / "damaged.npz"
    raw = bytearray(VENDORED.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    path.write_bytes(bytes(raw))
    assert zipfile.is_zipfile(path)
    _raises_naming(path)


def test_zip_with_damage_at_the_start_of_the_compressed_data(tmp_path):
    path = tmp_path / "damaged_early.npz"
    raw = bytearray(VENDORED.read_bytes())
    raw[1024:1088] = bytes(b ^ 0xFF for b in raw[1024:1088])  # inside x_train.npy's deflate data
    path.write_bytes(bytes(raw))
    _raises_naming(path)


# --- where the file comes from -------------------------------------------------------------------

def test_missing_explicit_path_is_not_replaced(tmp_path):
    missing = tmp_path / "nowhere" / "mnist.npz"
    _raises_naming(missing, "path argument")
    with pytest.raises(MnistDataError, match="does not exist"):
        locate_mnist(missing)


def test_missing_env_path_is_not_replaced(tmp_path, monkeypatch):
    missing = tmp_path / "env" / "mnist.npz"
    monkeypatch.setenv(data.ENV_VAR, str(missing))
    with pytest.raises(MnistDataError) as info:
        load_mnist("test")
    assert str(missing) in str(info.value)
    assert data.ENV_VAR in str(info.value)


def test_no_file_and_no_download(no_local_mnist):
    with pytest.raises(MnistDataError) as info:
        locate_mnist(download=False)
    assert "download=False" in str(info.value)
    assert str(no_local_mnist) in str(info.value)
    assert not no_local_mnist.exists()


def test_keras_cache_is_used_when_vendored_copy_is_missing(no_local_mnist):
    no_local_mnist.parent.mkdir(parents=True)
    shutil.copyfile(VENDORED, no_local_mnist)
    assert locate_mnist(download=False) == no_local_mnist


def _fake_get_file(write):
    calls = []

    def get_file(fname, origin=None, file_hash=None, cache_dir=None, cache_subdir="datasets",
                 **kwargs):
        calls.append(dict(fname=fname, origin=origin, file_hash=file_hash, cache_dir=cache_dir))
        target = Path(cache_dir) / cache_subdir / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        write(target)
        return str(target)

    return get_file, calls


def test_bad_download_leaves_no_cache_file(no_local_mnist, monkeypatch):
    raw = VENDORED.read_bytes()
    get_file, calls = _fake_get_file(lambda target: target.write_bytes(raw[: len(raw) // 3]))
    monkeypatch.setattr(keras.utils, "get_file", get_file)
    with pytest.raises(MnistDataError):
        load_mnist("test")
    assert len(calls) == 1
    assert calls[0]["origin"] == data.KERAS_ORIGIN
    assert calls[0]["file_hash"] == data.KERAS_FILE_SHA256
    # The download went to a temporary folder, not to the cache path itself.
    assert Path(calls[0]["cache_dir"]) != no_local_mnist.parent
    assert not no_local_mnist.exists()
    assert list(no_local_mnist.parent.iterdir()) == []  # nor any temporary folder


def test_failed_download_names_the_places(no_local_mnist, monkeypatch):
    def get_file(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.utils, "get_file", get_file)
    with pytest.raises(MnistDataError) as info:
        locate_mnist()
    message = str(info.value)
    assert "network is unreachable" in message
    assert str(no_local_mnist) in message and str(data.VENDORED_PATH) in message
    assert not no_local_mnist.exists()


def test_good_download_is_moved_into_the_cache(no_local_mnist, monkeypatch):
    get_file, calls = _fake_get_file(lambda target: shutil.copyfile(VENDORED, target))
    monkeypatch.setattr(keras.utils, "get_file", get_file)
    assert locate_mnist() == no_local_mnist
    assert no_local_mnist.read_bytes() == VENDORED.read_bytes()
    assert sorted(p.name for p in no_local_mnist.parent.iterdir()) == ["mnist.npz"]
    # The next run finds the cache and does not download again.
    assert locate_mnist() == no_local_mnist
    assert len(calls) == 1


# --- stratified_subset ---------------------------------------------------------------------------

@pytest.mark.parametrize("size, seed", [(100, 0), (1000, 1), (2345, 7)])
def test_stratified_subset_proportions(train_ids, size, seed):
    _, labels = train_ids
    keep = stratified_subset(labels, size, seed)
    assert keep.shape == (size,)
    assert np.all(np.diff(keep) > 0)  # sorted, no duplicates
    assert keep.min() >= 0 and keep.max() < len(labels)
    proportional = np.asarray(TRAIN_CLASS_COUNTS) * size / len(labels)
    counts = np.bincount(labels[keep], minlength=10)
    assert np.all(np.abs(counts - proportional) <= 1), (counts, proportional)


def test_stratified_subset_is_seeded(train_ids):
    _, labels = train_ids
    a = stratified_subset(labels, 500, seed=11)
    np.testing.assert_array_equal(a, stratified_subset(labels, 500, seed=11))
    assert not np.array_equal(a, stratified_subset(labels, 500, seed=12))


def test_stratified_subset_of_everything_is_everything():
    labels = np.repeat(np.arange(10), 3)
    np.testing.assert_array_equal(stratified_subset(labels, 30, seed=0), np.arange(30))
    np.testing.assert_array_equal(stratified_subset(labels, 99, seed=0), np.arange(30))


def test_stratified_subset_imbalanced_labels():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    keep = stratified_subset(labels, 50, seed=4)
    assert np.bincount(labels[keep]).tolist() == [35, 10, 5]
