"""helpers.experiments.heldout: each method trained once, tested on the 10,000 MNIST test images;
resumable."""

from __future__ import annotations

import json

import pytest

from helpers.experiments import heldout

# Pinned versions only: the held-out test (python -m helpers.tooling.run_heldout) runs with
# .venv (the README's commands), so the oldest-versions run leaves it out.
pytestmark = pytest.mark.pinned


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


def test_command_line_writes_the_test_scores(tmp_path, capsys):
    from helpers.tooling import run_heldout

    assert run_heldout.main([str(tmp_path), "--epochs", "1", "--batch-size", "32", "--subset",
                             "100", "--methods", "naive"]) == 0
    scores = (tmp_path / "test_scores.csv").read_text().splitlines()
    assert scores[0] == "method,epoch,loss,accuracy,test_loss,test_accuracy"
    assert scores[1].startswith("naive,1,")
    assert "test_accuracy" in capsys.readouterr().out


def test_command_line_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    from helpers.tooling import run_heldout

    (tmp_path / "notes.txt").write_text("not ours\n")
    with pytest.raises(SystemExit) as stop:
        run_heldout.main([str(tmp_path), "--epochs", "1", "--subset", "100"])
    assert stop.value.code == 2
    assert "parameter results_dir=" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
