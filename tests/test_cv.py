"""helpers.experiments.cv: stratified folds, and resumable cross-validation.

The resume logic is tested with fake, deterministic training functions (no TensorFlow training);
one small real run checks that cross_validate_mnist works end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.experiments import cv, store
from helpers.experiments.cv import COLUMNS, cross_validate, fold_indices
from helpers.training import METHODS

N, FOLDS, EPOCHS, BATCH, SEED = 103, 4, 3, 8, 7


@pytest.fixture(scope="module")
def toy_data():
    """x holds each sample's index, so a training function can tell which samples it got;
    labels are imbalanced (class 0 has 4x the samples of class 3)."""
    y = np.repeat(np.arange(4), [40, 30, 23, 10])
    y = np.random.default_rng(0).permutation(y)
    x = np.arange(N, dtype=np.float64).reshape(N, 1)
    return x, y


# --- fold_indices --------------------------------------------------------------------------------

@pytest.mark.parametrize("folds", [2, 4, 5])
def test_folds_partition_the_samples(toy_data, folds):
    _, y = toy_data
    splits = fold_indices(y, folds, seed=SEED)
    assert len(splits) == folds
    all_val = np.concatenate([val for _, val in splits])
    np.testing.assert_array_equal(np.sort(all_val), np.arange(N))  # every sample exactly once
    for train, val in splits:
        assert np.intersect1d(train, val).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(N))


@pytest.mark.parametrize("folds", [2, 4, 5])
def test_folds_are_stratified(toy_data, folds):
    _, y = toy_data
    class_counts = np.bincount(y)
    for _, val in fold_indices(y, folds, seed=SEED):
        counts = np.bincount(y[val], minlength=len(class_counts))
        assert np.all(np.abs(counts - class_counts / folds) <= 1), counts


def test_folds_accept_one_hot_labels(toy_data):
    _, y = toy_data
    one_hot = np.eye(4, dtype=np.float32)[y]
    for (t1, v1), (t2, v2) in zip(fold_indices(y, 3, 1), fold_indices(one_hot, 3, 1)):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(v1, v2)


def test_folds_are_seeded(toy_data):
    _, y = toy_data
    first = fold_indices(y, FOLDS, seed=SEED)
    again = fold_indices(y, FOLDS, seed=SEED)
    other = fold_indices(y, FOLDS, seed=SEED + 1)
    for (t1, v1), (t2, v2) in zip(first, again):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(v1, v2)
    assert any(not np.array_equal(v1, v2) for (_, v1), (_, v2) in zip(first, other))


# --- cross_validate with fake training functions -------------------------------------------------

class FakeModel:
    def __init__(self, seed):
        self.seed = seed


class Recorder:
    """A model_fn and training functions that record every call and return a History-like dict
    computed from what they were given (so a wrong fold or seed shows in the table)."""

    def __init__(self, interrupt=None):
        self.model_seeds = []
        self.calls = []
        self.interrupt = interrupt  # (method, fold) that raises KeyboardInterrupt

    def create_model(self, seed):
        self.model_seeds.append(seed)
        return FakeModel(seed)

    def trainer(self, method):
        def train(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0):
            (x_train, y_train), (x_val, y_val) = train_data, val_data
            fold = seed - SEED
            self.calls.append(dict(
                method=method, fold=fold, model_seed=model.seed, seed=seed, epochs=epochs,
                batch_size=batch_size, train=x_train[:, 0].astype(int), val=x_val[:, 0].astype(int),
                train_labels_ok=bool(np.all(y_train == self.y[x_train[:, 0].astype(int)])),
                val_labels_ok=bool(np.all(y_val == self.y[x_val[:, 0].astype(int)])),
            ))
            if self.interrupt == (method, fold):
                raise KeyboardInterrupt
            base = x_val.sum() / (x_train.sum() + len(method)) + model.seed
            return {
                "loss": [base / (e + 3) for e in range(epochs)],
                "accuracy": [1 / (e + 7 + model.seed) for e in range(epochs)],
                "val_loss": [base / (e + 11) ** 0.5 for e in range(epochs)],
                "val_accuracy": [float(np.float32(1 / (e + 13))) for e in range(epochs)],
                "seconds": [0.1 * (e + 1) + fold / 3 for e in range(epochs)],
            }

        return train

    def methods(self):
        return {"fit": self.trainer("fit"), "naive": self.trainer("naive")}


def _run(recorder, toy_data, results_dir=None, **changes):
    x, y = toy_data
    recorder.y = y
    kwargs = dict(folds=FOLDS, epochs=EPOCHS, batch_size=BATCH, seed=SEED,
                  model_fn=recorder.create_model, results_dir=results_dir, verbose=0)
    kwargs.update(changes)
    return cross_validate(recorder.methods(), x, y, **kwargs)


def _files(folder):
    """Every file under `folder` (hidden ones too) with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


EXPECTED_FILES = sorted(
    ["settings.json"] + [f"{m}/fold_{f:02d}.csv" for m in ("fit", "naive") for f in range(FOLDS)]
)


def test_table_has_a_row_per_method_fold_epoch(toy_data):
    table = _run(Recorder(), toy_data)
    assert list(table.columns) == COLUMNS
    assert len(table) == 2 * FOLDS * EPOCHS
    keys = list(zip(table["method"], table["fold"], table["epoch"]))
    assert keys == [(m, f, e) for m in ("fit", "naive") for f in range(FOLDS)
                    for e in range(1, EPOCHS + 1)]
    assert table.index.tolist() == list(range(len(table)))


def test_methods_keep_the_order_given(toy_data):
    recorder = Recorder()
    recorder.y = toy_data[1]
    methods = {"zeta": recorder.trainer("zeta"), "alpha": recorder.trainer("alpha")}
    table = cross_validate(methods, *toy_data, folds=2, epochs=1, batch_size=4, seed=SEED,
                           model_fn=recorder.create_model, verbose=0)
    assert table["method"].tolist() == ["zeta", "zeta", "alpha", "alpha"]


def test_every_method_gets_the_same_folds_and_seeds(toy_data):
    recorder = Recorder()
    _run(recorder, toy_data)
    # Fold-major order, fold f's model built with seed + f for every method.
    assert [(c["method"], c["fold"]) for c in recorder.calls] == [
        (m, f) for f in range(FOLDS) for m in ("fit", "naive")
    ]
    assert recorder.model_seeds == [SEED + f for f in range(FOLDS) for _ in range(2)]
    splits = fold_indices(toy_data[1], FOLDS, SEED)
    for call in recorder.calls:
        train, val = splits[call["fold"]]
        assert call["model_seed"] == call["seed"] == SEED + call["fold"]
        assert (call["epochs"], call["batch_size"]) == (EPOCHS, BATCH)
        np.testing.assert_array_equal(call["train"], train)
        np.testing.assert_array_equal(call["val"], val)
        assert call["train_labels_ok"] and call["val_labels_ok"]


@pytest.mark.parametrize("interrupted_method", ["fit", "naive"])
def test_interrupted_run_resumes_without_recomputing(toy_data, tmp_path, interrupted_method):
    reference = _run(Recorder(), toy_data, tmp_path / "uninterrupted")
    in_memory = _run(Recorder(), toy_data)
    pd.testing.assert_frame_equal(reference, in_memory, check_exact=True)

    folder = tmp_path / "resumed"
    first = Recorder(interrupt=(interrupted_method, 2))
    with pytest.raises(KeyboardInterrupt):
        _run(first, toy_data, folder)
    done = {(m, f) for m in ("fit", "naive") for f in (0, 1)}
    if interrupted_method == "naive":
        done.add(("fit", 2))  # fit's fold 2 finished before naive's started
    saved = sorted(p for p in _files(folder) if p != "settings.json")
    assert saved == sorted(f"{m}/fold_{f:02d}.csv" for m, f in done)
    assert not any(p.endswith(".tmp") or "/." in p or p.startswith(".") for p in _files(folder))

    second = Recorder()
    resumed = _run(second, toy_data, folder)
    todo = [(m, f) for f in range(FOLDS) for m in ("fit", "naive") if (m, f) not in done]
    assert [(c["method"], c["fold"]) for c in second.calls] == todo
    assert second.model_seeds == [SEED + f for _, f in todo]
    pd.testing.assert_frame_equal(resumed, reference, check_exact=True)
    assert sorted(_files(folder)) == EXPECTED_FILES  # no temporary files left

    third = Recorder()
    pd.testing.assert_frame_equal(_run(third, toy_data, folder), reference, check_exact=True)
    assert third.calls == [] and third.model_seeds == []


def test_run_killed_while_writing_a_fold_is_not_trusted(toy_data, tmp_path, monkeypatch):
    """A run stopped halfway through writing fold 2's file must not leave a half file that the
    rerun would read as finished."""
    reference = _run(Recorder(), toy_data)
    folder = tmp_path / "killed"
    real_write_text = Path.write_text

    def dying_write_text(self, text, *args, **kwargs):
        if "fold_02" in self.name:
            real_write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", dying_write_text)
    with pytest.raises(KeyboardInterrupt):
        _run(Recorder(), toy_data, folder)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    assert not (folder / "fit" / "fold_02.csv").exists()

    rerun = Recorder()
    resumed = _run(rerun, toy_data, folder)
    assert [(c["method"], c["fold"]) for c in rerun.calls] == [
        (m, f) for f in (2, 3) for m in ("fit", "naive")
    ]
    pd.testing.assert_frame_equal(resumed, reference, check_exact=True)


def test_saved_settings(toy_data, tmp_path):
    _run(Recorder(), toy_data, tmp_path, settings={"dataset": "toy", "subset": None})
    saved = json.loads((tmp_path / "settings.json").read_text())
    assert saved == {
        "dataset": "toy", "subset": None, "folds": FOLDS, "epochs": EPOCHS, "batch_size": BATCH,
        "seed": SEED, "model": "create_model", "samples": N,
        "data_sha256": cv.data_fingerprint(*toy_data),
    }


@pytest.mark.parametrize("change, setting", [
    (dict(epochs=EPOCHS + 1), "epochs"),
    (dict(folds=FOLDS + 1), "folds"),
    (dict(batch_size=BATCH * 2), "batch_size"),
    (dict(seed=SEED + 1), "seed"),
    (dict(settings={"subset": 50}), "subset"),
    ("other data", "data_sha256"),
])
def test_other_settings_are_refused(toy_data, tmp_path, change, setting):
    _run(Recorder(), toy_data, tmp_path)
    before = _files(tmp_path)
    assert sorted(before) == EXPECTED_FILES
    recorder = Recorder()
    if change == "other data":
        x, y = toy_data
        changed_x = x.copy()
        changed_x[0, 0] += 0.5
        args, change = ((changed_x, y), {})
    else:
        args = toy_data
    with pytest.raises(ValueError) as info:
        _run(recorder, args, tmp_path, **change)
    message = str(info.value)
    assert setting in message and str(tmp_path) in message
    assert recorder.calls == [] and recorder.model_seeds == []
    assert _files(tmp_path) == before  # nothing rewritten, added or removed


def test_run_details_are_recorded_before_training(toy_data, tmp_path):
    """The ablation's command line records how its variants are trained as soon as the folder is
    accepted, so a run in progress can already be summarized; a refused folder gets nothing."""
    recorder = Recorder(interrupt=("fit", 0))
    with pytest.raises(KeyboardInterrupt):
        _run(recorder, toy_data, tmp_path / "new", run_details={"steps_per_execution": 50})
    info = json.loads((tmp_path / "new" / "run_info.json").read_text())
    assert info["steps_per_execution"] == 50
    assert {"tensorflow", "intra_op_threads", "inter_op_threads"} <= set(info)

    _run(Recorder(), toy_data, tmp_path / "done")
    before = _files(tmp_path / "done")
    with pytest.raises(ValueError, match="other settings"):
        _run(Recorder(), toy_data, tmp_path / "done", epochs=EPOCHS + 1, run_details={"x": 1})
    assert _files(tmp_path / "done") == before


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "table.csv"
    store.write_text(path, "old\n")
    with pytest.raises(KeyboardInterrupt), store.written_atomically(path) as temporary:
        temporary.write_text("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_unknown_method_names_are_refused(toy_data):
    with pytest.raises(ValueError, match="bogus"):
        cross_validate(["fit", "bogus"], *toy_data, folds=2, epochs=1, batch_size=4,
                       model_fn=Recorder().create_model, verbose=0)


def test_data_fingerprint_sees_shape_and_values():
    a = np.arange(12, dtype=np.float32)
    labels = np.zeros(12)
    assert cv.data_fingerprint(a, labels) == cv.data_fingerprint(a.copy(), labels)
    assert cv.data_fingerprint(a, labels) != cv.data_fingerprint(a.reshape(3, 4), labels)
    b = a.copy()
    b[5] += 1
    assert cv.data_fingerprint(a, labels) != cv.data_fingerprint(b, labels)


def test_results_dir_for(tmp_path):
    assert cv.results_dir_for(tmp_path, folds=5, epochs=3) == tmp_path / "folds5-epochs3"


# --- one small real run --------------------------------------------------------------------------

def test_cross_validate_mnist_end_to_end(tmp_path, monkeypatch):
    table = cv.cross_validate_mnist(["matched"], folds=2, epochs=1, batch_size=32, subset=200,
                                    seed=0, results_dir=tmp_path, verbose=0)
    assert list(table.columns) == COLUMNS
    assert table[["method", "fold", "epoch"]].values.tolist() == [["matched", 0, 1],
                                                                  ["matched", 1, 1]]
    assert np.all(np.isfinite(table[["loss", "val_loss"]].to_numpy()))
    assert np.all((table[["accuracy", "val_accuracy"]] >= 0) & (table[["accuracy",
                                                                    "val_accuracy"]] <= 1))
    assert sorted(_files(tmp_path)) == ["matched/fold_00.csv", "matched/fold_01.csv",
                                        "settings.json"]
    saved = json.loads((tmp_path / "settings.json").read_text())
    assert {k: saved[k] for k in ("dataset", "split", "subset", "samples", "model", "folds",
                                  "epochs", "batch_size", "seed")} == {
        "dataset": "mnist", "split": "train", "subset": 200, "samples": 200,
        "model": "create_cnn", "folds": 2, "epochs": 1, "batch_size": 32, "seed": 0}

    # A rerun reads both folds back (exactly the same table) and trains nothing.
    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setitem(METHODS, "matched", must_not_train)
    again = cv.cross_validate_mnist(["matched"], folds=2, epochs=1, batch_size=32, subset=200,
                                    seed=0, results_dir=tmp_path, verbose=0)
    pd.testing.assert_frame_equal(again, table, check_exact=True)
