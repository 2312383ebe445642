"""The ablation's variants: one switchable loop, each variant one switch away from the article's
loop or the matched loop, each switch doing what its name says; and the effect statistics."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import nbformat
import numpy as np
import pandas as pd
import pytest

from helpers.experiments import ablation, store
from helpers.model import create_cnn
from helpers.training import (
    ABLATION_METHODS,
    DIFFERENCE_KEYS,
    DIFFERENCES,
    HISTORY_KEYS,
    METHODS,
    ablation_variants,
    train_fit,
    train_tape_loop,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_analysis_names_the_variants_as_training_makes_them():
    assert ablation.VARIANTS == ABLATION_METHODS


def test_importing_the_analysis_loads_no_framework():
    """The ablation's analysis reads CSVs: importing it must not start TensorFlow."""
    code = ("import sys; import helpers.experiments.ablation; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.split() == ["False", "False"], result.stdout + result.stderr


def test_each_variant_is_one_switch_away_from_a_baseline():
    variants = ablation_variants()
    assert len(variants) == 8 and set(variants) <= set(METHODS)
    for key in DIFFERENCE_KEYS:
        assert variants[f"naive+{key}"] == (key,)
        assert set(variants[f"matched-{key}"]) == set(DIFFERENCE_KEYS) - {key}


def _weights(model):
    return [v.numpy() for v in model.variables]


def test_matched_without_shuffle_is_fit_on_file_order(small_split):
    """`matched-shuffle` takes the samples in file order every epoch; fit given exactly that order
    computes the same steps, so History and every variable (the dropout seed state too) match bit
    for bit on this CPU."""
    (x, y), val = small_split
    variant_model, fit_model = create_cnn(0), create_cnn(0)
    variant = METHODS["matched-shuffle"](variant_model, (x, y), val, epochs=2, batch_size=50,
                                         seed=0)
    file_order = np.tile(np.arange(len(x)), (2, 1))
    fit = train_fit(fit_model, (x, y), val, epochs=2, batch_size=50, seed=0,
                    batch_orders=file_order)
    for key in HISTORY_KEYS:
        assert variant[key] == fit[key], key
    for a, b in zip(_weights(variant_model), _weights(fit_model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method, keeps_partial", [
    ("naive", False), ("naive+partial_batch", True), ("matched-partial_batch", False),
    ("matched", True),
])
def test_partial_batch_switch_sets_the_number_of_steps(small_split, method, keeps_partial):
    (x, y), val = small_split  # 640 images: 12 full batches of 50 and one of 40
    model = create_cnn(0)
    METHODS[method](model, (x, y), val, epochs=2, batch_size=50, seed=0)
    per_epoch = math.ceil(len(x) / 50) if keeps_partial else len(x) // 50
    assert int(model.optimizer.iterations.numpy()) == 2 * per_epoch


def _seed_state(model):
    dropout = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dropout))
    return dropout.seed_generator.state.numpy().copy()


@pytest.mark.parametrize("method, drops", [
    ("naive", False), ("naive+dropout", True), ("matched-dropout", False), ("matched", True),
])
def test_dropout_switch_decides_whether_dropout_draws(small_split, method, drops):
    """Dropout draws from its SeedGenerator only when it is active: the state moves iff the
    variant calls the model with training=True."""
    (x, y), val = small_split
    model = create_cnn(0)
    before = _seed_state(model)
    METHODS[method](model, (x[:100], y[:100]), val, epochs=1, batch_size=50, seed=0)
    assert (not np.array_equal(before, _seed_state(model))) == drops


def test_summed_loss_is_a_batch_size_times_sgd_learning_rate(small_split):
    """With SGD, the article's summed loss at learning rate lr takes the same steps as the mean
    loss at batch_size * lr (every batch full here). Float tolerance: the sum and batch_size x
    the mean round differently."""
    (x, y), val = small_split
    batch_size = 64  # 640 = 10 full batches

    def trained(fixes, learning_rate):
        model = create_cnn(0, compile=False)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        train_tape_loop(model, (x, y), val, epochs=1, batch_size=batch_size, seed=0,
                        fixes=fixes)
        return _weights(model)

    summed = trained((), 0.001)
    mean = trained(("mean_loss",), 0.001 * batch_size)
    for a, b in zip(summed, mean):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(summed, trained(("mean_loss",), 0.001))) > 1e-3


def test_unknown_fix_and_orders_without_shuffle_are_refused(small_split):
    (x, y), val = small_split
    with pytest.raises(ValueError, match="unknown fixes.*'droput'"):
        train_tape_loop(create_cnn(0), (x, y), val, epochs=1, batch_size=64, seed=0,
                        fixes=("droput",))
    with pytest.raises(ValueError, match="batch_orders needs the 'shuffle' fix"):
        train_tape_loop(create_cnn(0), (x, y), val, epochs=1, batch_size=64, seed=0,
                        fixes=(), batch_orders=np.zeros((1, len(x)), dtype=int))


def _synthetic_table(values: dict[str, list[float]], rise: float = 0.0) -> pd.DataFrame:
    """Two epochs per fold: val loss `v + rise` then `v` (best epoch first when rise < 0)."""
    rows = []
    for method, per_fold in values.items():
        for fold, value in enumerate(per_fold):
            for epoch, val_loss in ((1, value + rise), (2, value)):
                rows.append({"method": method, "fold": fold, "epoch": epoch, "loss": 0.0,
                             "accuracy": 0.0, "val_loss": val_loss, "val_accuracy": 0.0,
                             "seconds": 1.0})
    return pd.DataFrame(rows)


def test_gap_closed_is_the_share_of_the_naive_to_fit_gap():
    naive = [0.08, 0.07, 0.09, 0.075, 0.085, 0.08]
    fit = [0.03, 0.03, 0.035, 0.03, 0.025, 0.03]
    half = [(n + f) / 2 for n, f in zip(naive, fit)]
    table = _synthetic_table({"naive": naive, "fit": fit, "naive+dropout": half,
                              "matched-dropout": naive})
    result = ablation.effects(table).set_index(["variant", "measure"])
    row = result.loc[("naive+dropout", "final_val_loss")]
    assert row["gap_closed_mean"] == pytest.approx(0.5)
    assert row["vs_naive_mean"] == pytest.approx(np.mean(half) - np.mean(naive))
    assert row["vs_fit_mean"] == pytest.approx(np.mean(half) - np.mean(fit))
    assert row["vs_naive_p_value"] == pytest.approx(2 / 2**6)  # every fold lower than naive
    assert result.loc[("matched-dropout", "final_val_loss"), "gap_closed_mean"] == pytest.approx(0)
    assert row["folds"] == 6 and set(result.index.get_level_values(0)) == {"naive+dropout",
                                                                         "matched-dropout"}


def test_effects_use_only_folds_every_method_finished():
    table = _synthetic_table({"naive": [0.08, 0.07, 0.09], "fit": [0.03, 0.03, 0.04],
                              "naive+shuffle": [0.05, 0.05]})
    row = ablation.effects(table).iloc[0]
    assert row["folds"] == 2


def _write_folds(folder: Path, folds_per_method: dict[str, int]) -> None:
    """Fold CSVs as `python -m helpers.tooling.run_ablation` writes them: 2 epochs each, 3 s per
    fold."""
    from helpers.experiments.cv import history_table

    history = {key: [0.5, 0.05] for key in HISTORY_KEYS} | {"seconds": [1.0, 2.0]}
    for method, folds in folds_per_method.items():
        (folder / method).mkdir(parents=True, exist_ok=True)
        for fold in range(folds):
            history_table(history, method, fold).to_csv(
                folder / method / f"fold_{fold:02d}.csv", index=False)


def test_variants_are_compared_on_the_folds_all_of_them_finished(tmp_path):
    """Two processes share the variants; while one is a fold ahead, that fold is left out of the
    comparison (and kept in table.csv)."""
    ahead, behind = ABLATION_METHODS[:2]
    _write_folds(tmp_path, {ahead: 3, behind: 2})
    assert ablation.complete_folds(ablation.combined_table(tmp_path, None, False)) == [0, 1]
    compared = ablation.combined_table(tmp_path, None)
    assert sorted(compared.groupby("method")["fold"].nunique()) == [2, 2]


def test_rise_after_best_epoch():
    table = _synthetic_table({"naive": [0.08]}, rise=-0.01)  # best at epoch 1, then +0.01
    measures = ablation.per_fold_measures(table).iloc[0]
    assert measures["best_val_loss"] == pytest.approx(0.07)
    assert measures["val_loss_rise"] == pytest.approx(0.01)


def test_summary_files_from_finished_folds(tmp_path):
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    values = {"naive": [0.08, 0.07], "fit": [0.03, 0.03], "matched": [0.03, 0.031]}
    _synthetic_table(values).to_csv(baseline / "table.csv", index=False)
    variants = tmp_path / "variants"
    results = store.ResultsFolder.open(variants, {"folds": 2})
    _write_folds(variants, dict.fromkeys(ABLATION_METHODS[:2], 2))
    with pytest.raises(FileNotFoundError, match="run_info.json is missing"):
        ablation.write_summary(variants, baseline)
    results.record_run_info(steps_per_execution=50)
    info = ablation.write_summary(variants, baseline)
    assert info["finished_runs"] == 4 and info["training_seconds_all_folds"] == 12.0
    assert info["steps_per_execution"] == 50 and info["tensorflow"]
    assert len(pd.read_csv(variants / "table.csv")) == 8
    assert info["complete_folds"] == 2
    assert len(pd.read_csv(variants / "effects.csv")) == 2 * len(ablation.MEASURES)
    assert (variants / "gap_closed.png").stat().st_size > 0


@pytest.mark.parametrize("finished_folds, progress", [
    (1, "8 of 16 (variant, fold) runs finished"),
    (2, "All 16 (variant, fold) runs"),
])
def test_report_says_whether_the_run_is_complete(tmp_path, finished_folds, progress):
    """While folds are missing the README block says how far the run is; once every run has
    finished it says so, without "so far"."""
    from helpers.tooling import report

    baseline = tmp_path / "baseline"
    baseline.mkdir()
    _synthetic_table({"naive": [0.08, 0.07], "fit": [0.03, 0.03]}).to_csv(
        baseline / "table.csv", index=False)
    variants = tmp_path / "variants"
    store.ResultsFolder.open(variants, {"folds": 2}).record_run_info(steps_per_execution=50)
    _write_folds(variants, dict.fromkeys(ABLATION_METHODS, finished_folds))
    ablation.write_summary(variants, baseline)
    text = report.ablation_markdown(report.ablation_effects(variants, baseline), variants,
                                    tmp_path)
    assert progress in text
    assert ("so far" in text) == (finished_folds < 2)



def _final_val_loss(path: Path) -> pd.Series:
    table = pd.read_csv(path)
    return table.loc[table["epoch"] == table["epoch"].max(), "val_loss"]


def test_committed_answer_quotes_the_committed_fold_files():
    """The README's headline, its ablation block and notebook 02's first paragraph are generated
    from results/ablation; recomputed here straight from the fold CSVs of the folds every variant
    has finished, each added fix's share of the gap must be what they quote."""
    from helpers.tooling import report

    assert report.main(["results/full-scale", "--ablation", "results/ablation", "--check"]) == 0, (
        "stale: python -m helpers.tooling.report results/full-scale --ablation results/ablation")
    baseline = pd.read_csv(ROOT / "results/full-scale/table.csv")
    final = baseline[baseline["epoch"] == baseline["epoch"].max()]
    readme = (ROOT / "README.md").read_text()
    answer = readme.split(report.ANSWER_MARKERS[0])[1].split(report.ANSWER_MARKERS[1])[0]
    notebook = nbformat.read(ROOT / "notebooks/02_article_loop_vs_fit.ipynb", as_version=4)
    finished = {method: {int(path.stem.split("_")[1])
                         for path in (ROOT / "results/ablation" / method).glob("fold_*.csv")}
                for method in ABLATION_METHODS}
    complete = set.intersection(*(folds for folds in finished.values() if folds))
    quoted = 0
    for difference in DIFFERENCES:
        files = sorted((ROOT / "results/ablation" / f"naive+{difference.key}").glob("fold_*.csv"))
        files = [path for path in files if int(path.stem.split("_")[1]) in complete]
        if not files:
            continue
        shares = []
        for path in files:
            fold = int(path.stem.split("_")[1])
            naive, fit = (float(final.loc[(final.method == m) & (final.fold == fold),
                                          "val_loss"].iloc[0]) for m in ("naive", "fit"))
            shares.append((naive - float(_final_val_loss(path).iloc[0])) / (naive - fit))
        assert difference.name in answer, (difference.key, answer)
        assert f"{np.mean(shares):.0%}" in answer, (difference.key, answer)
        quoted += 1
    assert quoted >= 1
    assert answer.strip().split(" See [")[0] in notebook.cells[0].source


def test_a_share_that_rounds_to_zero_is_written_0_percent():
    assert [ablation.percent(s) for s in (-0.004, 0.0, 0.834, -0.54)] == ["0%", "0%", "83%", "-54%"]


@pytest.mark.pinned
def test_summarize_only_regenerates_the_committed_tables(tmp_path):
    """`run_ablation --summarize-only` on a copy of results/ablation writes its tables, figure and
    run_info.json byte for byte as committed."""
    from helpers.tooling import run_ablation

    copy = tmp_path / "ablation"
    shutil.copytree(ROOT / "results/ablation", copy)
    for name in ("table.csv", "summary.csv", "effects.csv", "gap_closed.png"):
        (copy / name).unlink()
    assert run_ablation.main(["--results-dir", str(copy), "--baseline",
                              str(ROOT / "results/full-scale"), "--summarize-only"]) == 0
    for name in ("table.csv", "summary.csv", "effects.csv", "gap_closed.png", "run_info.json"):
        assert (copy / name).read_bytes() == (ROOT / "results/ablation" / name).read_bytes(), name
    assert not list(copy.rglob("*.tmp"))


def test_summarize_only_refuses_a_baseline_with_other_settings(tmp_path, capsys):
    from helpers.tooling import run_ablation

    variants, baseline = tmp_path / "variants", tmp_path / "baseline"
    for folder, epochs in ((variants, 2), (baseline, 30)):
        store.ResultsFolder.open(folder, {"folds": 2, "epochs": epochs})
    (variants / store.RUN_INFO).write_text("{}\n")  # the run that trained the variants wrote it
    with pytest.raises(SystemExit) as stop:
        run_ablation.main(["--results-dir", str(variants), "--baseline", str(baseline),
                           "--summarize-only"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (f"parameter --baseline={str(baseline)!r} is not allowed: its results were made with "
            "other settings (epochs: saved 30, now 2)") in error


@pytest.mark.parametrize("argv, message", [
    (["--folds", "1"], "parameter --folds=1 is not allowed: it must be >= 2"),
    (["--threads", "-1"], "parameter --threads=-1 is not allowed: it must be >= 0"),
    (["--steps-per-execution", "0"], "--steps-per-execution=0 is not allowed"),
    (["--baseline", "no/such/folder"], "--baseline='no/such/folder' is not allowed: it must be a "
                                       "results folder with a settings.json"),
])
def test_command_line_refuses_bad_numbers(tmp_path, capsys, argv, message):
    from helpers.tooling import run_ablation

    with pytest.raises(SystemExit) as exit_info:
        run_ablation.main(["--results-dir", str(tmp_path / "new"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_no_code_follows_a_main_guard():
    """A command line's module ends with its ``if __name__ == "__main__":`` block: code after it
    is not run when the module is executed, only when it is imported."""
    for path in sorted([*(ROOT / "helpers").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        lines = path.read_text().splitlines()
        guards = [i for i, line in enumerate(lines) if line.startswith("if __name__ ==")]
        for guard in guards:
            after = [line for line in lines[guard + 1:] if line.strip()]
            assert all(line.startswith((" ", "\t")) for line in after), path
