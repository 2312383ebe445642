"""helpers.experiments.heldout: each method trained once, tested on the 10,000 MNIST test images;
resumable."""

from __future__ import annotations

import json

from helpers.experiments import heldout


def test_train_and_test_writes_each_method_and_resumes(tmp_path):
    table = heldout.train_and_test(["fit", "naive"], epochs=1, batch_size=32, subset=100,
                                   results_dir=tmp_path, verbose=0)
    assert list(table.columns) == heldout.COLUMNS
    assert sorted(table["method"]) == ["fit", "naive"]
    scores = heldout.final_test_scores(table)
    assert scores["test_accuracy"].between(0, 1).all() and (scores["test_loss"] > 0).all()
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert set(info["wall_seconds"]) == {"fit", "naive"}
    assert {"intra_op_threads", "inter_op_threads", "tensorflow"} <= set(info)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished method was trained again")

    again = heldout.train_and_test({"fit": must_not_train, "naive": must_not_train}, epochs=1,
                                   batch_size=32, subset=100, results_dir=tmp_path, verbose=0)
    assert again[list(heldout.TEST_KEYS)].equals(table[list(heldout.TEST_KEYS)])
