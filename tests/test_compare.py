"""Fold summaries, the paired sign-flip test, generated verdicts and the README results block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.experiments import compare
from helpers.experiments.cv import COLUMNS
from helpers.tooling import report

REPO = Path(__file__).resolve().parent.parent
FULL_SCALE = REPO / "results" / "full-scale"


def synthetic_table(folds=6, epochs=4, naive_penalty=0.05, matched_noise=0.0):
    """fit, naive and matched on `folds` folds; naive's validation loss is worse by a fixed
    amount in every fold and keeps rising after epoch 2."""
    rows = []
    rng = np.random.default_rng(0)
    for fold in range(folds):
        base = 0.3 + 0.0137 * fold
        for method in ("fit", "naive", "matched"):
            for epoch in range(1, epochs + 1):
                val_loss = base / epoch
                if method == "naive":
                    val_loss = base / min(epoch, 2) + naive_penalty * max(0, epoch - 2)
                if method == "matched":
                    val_loss += matched_noise * rng.standard_normal()
                rows.append([method, fold, epoch, 1 / epoch, 0.9, val_loss, 1 - val_loss, 1.5])
    return pd.DataFrame(rows, columns=COLUMNS)


def test_sign_flip_p_value_is_exact():
    assert compare.sign_flip_p_value(np.ones(6)) == pytest.approx(2 / 64)
    assert compare.sign_flip_p_value(np.array([1.0, -1.0, 1.0, -1.0])) == 1.0
    # 3 positive, 1 negative of equal size: |mean| >= 0.5 for sign patterns with 4 or 3 alike.
    assert compare.sign_flip_p_value(np.array([1.0, 1.0, 1.0, -1.0])) == pytest.approx(10 / 16)


def test_summarize_final_best_and_rise():
    summary = compare.summarize(synthetic_table())
    assert list(summary.index) == ["fit", "naive", "matched"]
    naive = summary.loc["naive"]
    assert naive["best_epoch_mean"] == 2
    assert naive["val_loss_rise_mean"] == pytest.approx(0.05 * 2)
    assert summary.loc["fit", "best_epoch_mean"] == 4
    assert summary.loc["fit", "val_loss_rise_mean"] == 0


def test_paired_comparison_and_verdicts():
    table = synthetic_table(matched_noise=0.01)
    worse = compare.paired_comparison(table, "naive", "fit", "val_loss")
    assert worse["folds"] == 6
    assert worse["p_value"] == pytest.approx(2 / 64)
    assert worse["ci_low"] > 0 and worse["a_better_in"] == 0
    sentence = compare.verdict(worse, {"naive": "the naive loop", "fit": "fit"})
    assert "distinguishable" in sentence and "not distinguishable" not in sentence
    assert "higher by" in sentence
    same = compare.paired_comparison(table, "matched", "fit", "val_loss")
    assert same["ci_low"] < 0 < same["ci_high"]
    assert "not distinguishable" in compare.verdict(same, {})
    few = compare.paired_comparison(synthetic_table(folds=4), "naive", "fit", "val_loss")
    assert "cannot be distinguished with 4 folds" in compare.verdict(few, {})


def test_paired_comparison_of_the_rise_after_the_best_epoch():
    """RISE pairs each fold's final minus lowest val_loss: naive's rises by 0.05 a fold after
    epoch 2 in the synthetic table (2 epochs: 0.1), fit's never rises."""
    per_fold = compare.per_fold(synthetic_table(), compare.RISE)
    assert per_fold["naive"].to_numpy() == pytest.approx([0.1] * 6)
    assert (per_fold["fit"] == 0).all()
    result = compare.paired_comparison(synthetic_table(), "naive", "fit", compare.RISE)
    assert result["mean_difference"] == pytest.approx(0.1) and result["p_value"] == 2 / 64
    sentence = compare.verdict(result, {})
    assert sentence.startswith("naive vs fit, val loss rise after the best epoch: distinguishable")
    assert "has the lower val loss rise after the best epoch in 0 of 6 folds" in sentence


def test_readme_block_from_a_results_folder(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    table = synthetic_table()
    table.to_csv(results / "table.csv", index=False)
    (results / "curves.png").write_bytes(b"")
    (results / "settings.json").write_text(json.dumps(
        {"folds": 6, "epochs": 4, "batch_size": 64, "seed": 0, "samples": 60000}))
    (results / "run_info.json").write_text(json.dumps(
        {"tensorflow": "2.21.0", "keras": "3.15.1", "cpu_count": 2, "machine": "x86_64",
         "training_seconds_all_folds": 7200.0}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nstale\n{report.END}\nafter\n")
    assert report.main([str(results), "--readme", str(readme), "--check"]) == 1
    assert report.main([str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "stale" not in text
    assert "[results/curves.png](results/curves.png)" in text
    fit_row = next(line for line in text.splitlines() if line.startswith("| model.fit()"))
    final_fit_loss = table[(table.method == "fit") & (table.epoch == 4)].val_loss
    assert f"{final_fit_loss.mean():.4f} ± {final_fit_loss.std():.4f}" in fit_row
    assert report.main([str(results), "--readme", str(readme), "--check"]) == 0


def test_committed_readme_results_come_from_the_full_scale_table():
    """The README's numbers are regenerated from results/full-scale and must match."""
    assert (FULL_SCALE / "table.csv").is_file(), "results/full-scale/table.csv is missing"
    assert report.main([str(FULL_SCALE), "--check"]) == 0, (
        "README results block is stale: python -m helpers.tooling.report results/full-scale")
    table = pd.read_csv(FULL_SCALE / "table.csv")
    settings = json.loads((FULL_SCALE / "settings.json").read_text())
    assert len(table) == 3 * settings["folds"] * settings["epochs"]
    assert "(results/full-scale/curves.png)" in (REPO / "README.md").read_text()
