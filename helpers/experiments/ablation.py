"""Which of fit's behaviours closes the gap to the article's overfitting loop: one fix at a time.

Each variant is the article's loop with exactly one of `helpers.training.DIFFERENCES` done as fit
does it (``naive+<key>``), or the matched loop with exactly one undone (``matched-<key>``). They
are cross-validated like any other method (`helpers.training.METHODS`), on the same folds and
from the same per-fold initial weights as fit, the article's loop and the matched loop.

For each variant and each of three overfitting measures -- final validation loss, best
validation loss, and how far validation loss rises after its best epoch -- `effects` gives the
paired difference to the article's loop and to fit
(`helpers.experiments.compare.paired_difference`), and the
share of the article's-loop-to-fit gap that the variant closes::

    gap closed = (naive - variant) / (naive - fit)     per fold, then mean and 95% CI over folds

1 means the variant is as good as fit, 0 as bad as the article's loop. For an added fix it is
the share that fix closes; for a removed one, 1 - (gap closed) is the share removing it reopens.

This module is the analysis: it reads fold tables and writes tables and a figure, and importing
it loads no framework. The variants are trained at the article's scale (hours on two cores) by
the command line `helpers.tooling.run_ablation`, resumably and fold by fold; it reads fit / naive /
matched back from the committed results instead of retraining them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from helpers.differences import DIFFERENCE_KEYS, DIFFERENCES
from helpers.experiments import store

# The variants' names in helpers.training.ABLATION_METHODS's order (a test checks they agree),
# spelled out here because importing helpers.training loads TensorFlow.
VARIANTS = (*(f"naive+{key}" for key in DIFFERENCE_KEYS),
            *(f"matched-{key}" for key in DIFFERENCE_KEYS))
BASELINES = ("naive", "fit", "matched")
MEASURES = {
    "final_val_loss": "final val loss",
    "best_val_loss": "best val loss",
    "val_loss_rise": "val loss rise after the best epoch",
}
DIFFERENCE_NAMES = {difference.key: difference.name for difference in DIFFERENCES}


def variant_label(method: str) -> str:
    """``naive+dropout`` -> "article's loop + Dropout active in training"."""
    if method.startswith("naive+"):
        return f"article's loop + {DIFFERENCE_NAMES[method[len('naive+'):]]}"
    if method.startswith("matched-"):
        return f"matched loop − {DIFFERENCE_NAMES[method[len('matched-'):]]}"
    return method


def per_fold_measures(table: pd.DataFrame) -> pd.DataFrame:
    """One row per method and fold: the three overfitting measures (columns of `MEASURES`)."""
    ordered = table.sort_values(["method", "fold", "epoch"])
    grouped = ordered.groupby(["method", "fold"], sort=False)["val_loss"]
    measures = pd.DataFrame({
        "final_val_loss": grouped.last(),
        "best_val_loss": grouped.min(),
    })
    measures["val_loss_rise"] = measures["final_val_loss"] - measures["best_val_loss"]
    return measures.reset_index()


def effects(table: pd.DataFrame, variants=VARIANTS) -> pd.DataFrame:
    """For every variant in `table` and every measure: the paired difference to the article's
    loop and to fit (mean, corrected 95% CI, sign-flip p), and the share of the gap closed.
    Only folds that every compared method has finished are used."""
    from helpers.experiments.compare import paired_difference

    measures = per_fold_measures(table)
    rows = []
    for variant in [v for v in variants if v in set(measures["method"])]:
        for measure in MEASURES:
            wide = (measures[measures["method"].isin([variant, "naive", "fit"])]
                    .pivot(index="fold", columns="method", values=measure)
                    .dropna())
            row = {"variant": variant, "label": variant_label(variant), "measure": measure,
                   "folds": len(wide)}
            for baseline in ("naive", "fit"):
                result = paired_difference(wide[variant] - wide[baseline])
                row.update({f"vs_{baseline}_{key}": value for key, value in result.items()})
            gap = (wide["naive"] - wide[variant]) / (wide["naive"] - wide["fit"])
            row.update({f"gap_closed_{key}": value
                        for key, value in paired_difference(gap).items()})
            for method, name in ((variant, "variant"), ("naive", "naive"), ("fit", "fit")):
                row[f"{name}_mean"] = float(wide[method].mean())
                row[f"{name}_std"] = float(wide[method].std(ddof=1))
            rows.append(row)
    return pd.DataFrame(rows, columns=_effect_columns())


def _effect_columns() -> list[str]:
    stats = ("mean", "ci_low", "ci_high", "cohens_dz", "p_value")
    return ["variant", "label", "measure", "folds",
            *(f"{prefix}_{stat}" for prefix in ("vs_naive", "vs_fit", "gap_closed")
              for stat in stats),
            *(f"{name}_{stat}" for name in ("variant", "naive", "fit") for stat in ("mean", "std"))]


def plot_gap_closed(effect_table: pd.DataFrame, measure: str = "final_val_loss", path=None,
                    title: str | None = None):
    """Dot-and-CI plot of the gap closed per fix: "article's loop + fix" next to "matched loop
    − fix", one row per difference. Dots at 1 = as good as fit, at 0 = as bad as the article's
    loop."""
    import matplotlib.pyplot as plt

    rows = effect_table[effect_table["measure"] == measure].set_index("variant")
    figure, ax = plt.subplots(figsize=(8, 3.6))
    for i, difference in enumerate(DIFFERENCES):
        for variant, offset, color, marker, label in (
            (f"naive+{difference.key}", -0.12, "tab:red", "o", "article's loop\n+ this fix"),
            (f"matched-{difference.key}", 0.12, "tab:green", "s", "matched loop\n− this fix"),
        ):
            if variant not in rows.index:
                continue
            row = rows.loc[variant]
            mean = row["gap_closed_mean"]
            error = [[mean - row["gap_closed_ci_low"]], [row["gap_closed_ci_high"] - mean]]
            ax.errorbar(mean, i + offset, xerr=error,
                        fmt=marker, color=color, capsize=3, label=label if i == 0 else None)
    ax.axvline(0, color="tab:red", lw=0.8, ls=":")
    ax.axvline(1, color="tab:blue", lw=0.8, ls=":")
    ax.set_yticks(range(len(DIFFERENCES)), [d.name for d in DIFFERENCES])
    ax.invert_yaxis()
    folds = int(rows["folds"].max()) if len(rows) else 0
    spread = ("mean and 95% CI over folds" if folds > 1
              else "one fold: no interval, read it as a demonstration")
    ax.set_xlabel(f"share of the article's-loop → fit() gap in {MEASURES[measure]}\n"
                  f"0 = as the article's loop, 1 = as fit()  ({spread})")
    ax.set_title(title or f"Which fix closes the gap? ({folds} folds)")
    # beside the axes: inside, it would cover a dot wherever the results put one
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    if path is not None:
        with store.written_atomically(path) as temporary:
            figure.savefig(temporary, format=Path(path).suffix[1:], dpi=120)
    return figure


def combined_table(results_dir: Path, baseline_dir: Path | None,
                   complete_folds_only: bool = True) -> pd.DataFrame:
    """The variants' finished folds from `results_dir`, and the baselines (fit, naive, matched)
    from `baseline_dir`'s table.csv (or from `results_dir` when no baseline folder is given).

    With `complete_folds_only`, only the folds that every variant in `results_dir` has finished:
    while the run is in progress, every variant is then compared on the same folds (the run is
    fold-major, so at most its last fold is left out)."""
    folds = sorted(Path(results_dir).glob("*/fold_*.csv"))
    tables = [pd.read_csv(path) for path in folds]
    if baseline_dir is not None:
        baseline = pd.read_csv(Path(baseline_dir) / "table.csv")
        tables.append(baseline[baseline["method"].isin(BASELINES)])
    if not tables:
        raise FileNotFoundError(f"no finished folds in {results_dir}")
    table = pd.concat(tables, ignore_index=True)
    return only_complete_folds(table) if complete_folds_only else table


def only_complete_folds(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with the variants' runs limited to the folds every variant has finished."""
    keep = ~table["method"].isin(VARIANTS) | table["fold"].isin(complete_folds(table))
    return table[keep].reset_index(drop=True)


def complete_folds(table: pd.DataFrame) -> list[int]:
    """The folds that every variant in `table` has finished."""
    variants = table[table["method"].isin(VARIANTS)]
    per_variant = variants.groupby("method")["fold"].unique()
    if per_variant.empty:
        return []
    return sorted(set.intersection(*(set(folds) for folds in per_variant)))


def write_summary(results_dir: Path, baseline_dir: Path | None) -> dict:
    """table.csv (every finished run of the variants); summary.csv, effects.csv and
    gap_closed.png from the folds every variant has finished; the summed training time, the
    number of finished runs and of complete folds in run_info.json (which the run that trained
    the variants wrote). Every file is written atomically."""
    from helpers.experiments.compare import summarize

    results = store.ResultsFolder(results_dir)
    if not (results.path / store.RUN_INFO).exists():
        raise FileNotFoundError(f"{results.path / store.RUN_INFO} is missing: it records how the "
                                "variants were trained")
    finished = combined_table(results_dir, baseline_dir, complete_folds_only=False)
    missing = sorted({"naive", "fit"} - set(finished["method"]))
    if missing:
        raise FileNotFoundError(f"no runs of {' and '.join(missing)} in "
                                f"{baseline_dir or results_dir} to compare the variants with; "
                                "give the baselines' results folder, e.g. results/full-scale")
    variants = finished[finished["method"].isin(VARIANTS)]
    order = {name: i for i, name in enumerate(VARIANTS)}
    variants = variants.sort_values(
        ["method", "fold", "epoch"], key=lambda c: c.map(order) if c.name == "method" else c)
    results.write_table("table.csv", variants)
    combined = only_complete_folds(finished)
    results.write_table("summary.csv", summarize(combined), index=True)
    effect_table = effects(combined)
    results.write_table("effects.csv", effect_table)
    plot_gap_closed(effect_table, path=results.path / "gap_closed.png")
    info = results.recorded_run_info()
    info["training_seconds_all_folds"] = round(float(variants["seconds"].sum()), 1)
    info["finished_runs"] = int(variants.groupby(["method", "fold"]).ngroups)
    info["complete_folds"] = len(complete_folds(variants))
    results.write_json(store.RUN_INFO, info)
    return info


def percent(share: float) -> str:
    """A share as a whole percentage; a share that rounds to zero is "0%", never "-0%"."""
    text = f"{share:.0%}"
    return "0%" if text == "-0%" else text


def _share(row, prefix="gap_closed") -> str:
    mean = row[f"{prefix}_mean"]
    if row["folds"] < 2:
        return percent(mean)
    return (f"{percent(mean)} (95% CI {percent(row[f'{prefix}_ci_low'])} to "
            f"{percent(row[f'{prefix}_ci_high'])})")


def answer_sentence(effect_table: pd.DataFrame, total_folds: int,
                    measure: str = "final_val_loss") -> str:
    """The ablation's answer in a few sentences, every number from the tables: which single fix
    closes the largest share of the article's-loop-to-fit gap in `measure`, what removing it from
    the matched loop does, and the other fixes' shares; `total_folds` is how many folds the full
    run has (fewer may have finished)."""
    rows = effect_table[effect_table["measure"] == measure].set_index("variant")
    added = [f"naive+{d.key}" for d in DIFFERENCES if f"naive+{d.key}" in rows.index]
    if not added:
        return "No fold of the one-fix-at-a-time ablation has finished yet."
    best = max(added, key=lambda v: rows.loc[v, "gap_closed_mean"])
    key = best[len("naive+"):]
    row = rows.loc[best]
    complete = len(added) == len(DIFFERENCES)
    folds = int(row["folds"])
    what = MEASURES[measure]
    scope = (f"{total_folds}-fold" if folds == total_folds
             else f"{folds} of {total_folds} folds of the")
    scope = f" ({scope} cross-validation at the article's settings, mean over folds)."
    if row["naive_mean"] <= row["fit_mean"]:
        return (f"Here the article's loop does not end with a higher {what} than fit() "
                f"({row['naive_mean']:.4f} vs {row['fit_mean']:.4f}), so there is no gap for a "
                f"fix to close{scope}")
    name = DIFFERENCE_NAMES[key]
    if complete:
        # Which fix closes the largest share, not "does most of the damage": with few folds the
        # removal below can reopen little of the gap.
        opening = (f"Of the {len(DIFFERENCES)} differences, {name} closes the largest share: "
                   "adding it to")
    else:
        opening = (f"Partial result ({len(added)} of the {len(DIFFERENCES)} fixes measured so "
                   f"far): adding {name} to")
    sentence = (
        f"{opening} the article's loop alone closes {_share(row)} of the gap in "
        f"{what} between the article's loop ({row['naive_mean']:.4f}) and fit() "
        f"({row['fit_mean']:.4f}), to {row['variant_mean']:.4f}"
    )
    removed = f"matched-{key}"
    if removed in rows.index:
        reopened = rows.loc[removed]
        sentence += (f"; removing it from the matched loop reopens "
                     f"{percent(1 - reopened['gap_closed_mean'])} of it "
                     f"({reopened['variant_mean']:.4f})")
    others = [f"{DIFFERENCE_NAMES[v[len('naive+'):]]} {percent(rows.loc[v, 'gap_closed_mean'])}"
              for v in added if v != best]
    if others:
        sentence += f". Each other fix alone closes: {', '.join(others)}"
    return sentence + scope


def plain_answer(effect_table: pd.DataFrame) -> str:
    """The answer in plain words, with one number from the tables: the share of the gap in final
    val loss that switching Dropout on alone closes in the article's loop."""
    rows = effect_table[effect_table["measure"] == "final_val_loss"].set_index("variant")
    if "naive+dropout" not in rows.index:
        return "The one-fix-at-a-time run has not measured Dropout yet."
    return ("The article's loop called the model without `training=True`, so Dropout never ran; "
            f"switching it on alone closes {percent(rows.loc['naive+dropout', 'gap_closed_mean'])} "
            "of the gap in final validation loss between that loop and `fit()`.")


def share_interval(row: pd.Series, reopened: bool = False) -> str:
    """An `effects` row's gap closed as "97% [80%, 114%]" (95% CI); with `reopened`, the share
    that removing the fix reopens, 1 - gap closed, whose interval ends swap."""
    mean, low, high = (row[f"gap_closed_{k}"] for k in ("mean", "ci_low", "ci_high"))
    if reopened:
        mean, low, high = 1 - mean, 1 - high, 1 - low
    if row["folds"] < 2:
        return percent(mean)
    return f"{percent(mean)} [{percent(low)}, {percent(high)}]"


def effects_overview(effect_table: pd.DataFrame, measure: str = "final_val_loss") -> pd.DataFrame:
    """One readable row per variant for `measure`: its mean ± std, the gap closed with its CI,
    and the paired differences to the article's loop and to fit with their p-values."""

    def interval(row, prefix):
        mean, low, high = (f"{row[f'{prefix}_{k}']:+.4f}" for k in ("mean", "ci_low", "ci_high"))
        return f"{mean} [{low}, {high}]" if row["folds"] > 1 else mean

    rows = effect_table[effect_table["measure"] == measure]
    return pd.DataFrame({
        "variant": rows["label"],
        MEASURES[measure]: [f"{m:.4f} ± {s:.4f}" if folds > 1 else f"{m:.4f}"
                            for m, s, folds in zip(rows["variant_mean"], rows["variant_std"],
                                                   rows["folds"])],
        "gap closed [95% CI]": [share_interval(row) for _, row in rows.iterrows()],
        "− article's loop [95% CI]": [interval(row, "vs_naive") for _, row in rows.iterrows()],
        "p, vs article's loop": [f"{p:.3f}" for p in rows["vs_naive_p_value"]],
        "− fit() [95% CI]": [interval(row, "vs_fit") for _, row in rows.iterrows()],
        "p, vs fit()": [f"{p:.3f}" for p in rows["vs_fit_p_value"]],
        "folds": rows["folds"],
    }).set_index("variant")
