"""Figures: learning curves as mean +- std over cross-validation folds."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

METHOD_COLORS = {"fit": "tab:blue", "naive": "tab:red", "matched": "tab:green"}
# fit's and the matched loop's curves often coincide: fit's is drawn first, wide and pale, and the
# others narrow on top of it (matched's dotted), so a matched curve lying on fit's leaves fit's
# visible on both sides of it.
METHOD_STYLES = {"fit": "-", "naive": "--", "matched": ":"}
METHOD_WIDTHS = {"fit": 5.0}
METHOD_ALPHAS = {"fit": 0.45}
METHOD_LABELS = {
    "fit": "model.fit()",
    "naive": "article's tape loop",
    "matched": "matched tape loop",
}


def fold_band(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per method and epoch: mean and standard deviation over folds of one column."""
    return (table.groupby(["method", "epoch"], sort=False)[column]
            .agg(["mean", "std"]).fillna({"std": 0.0}).reset_index())


def best_epochs(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, the epoch whose mean validation loss over folds is lowest, and that loss."""
    band = fold_band(table, "val_loss")
    best = band.loc[band.groupby("method", sort=False)["mean"].idxmin()]
    return best.set_index("method")[["epoch", "mean"]].rename(columns={"mean": "val_loss"})


def plot_cv_curves(table: pd.DataFrame, title: str | None = None,
                   path: str | os.PathLike | None = None):
    """Loss and accuracy per epoch, training and validation in separate panels, mean +- std over
    folds -- the article's Figure 4, made readable: one colour and one line style per method, fit's
    wide and pale under the others (so curves that coincide, like fit's and the matched loop's,
    stay visible), loss on a log scale (epoch 1 would otherwise flatten the rest), each method's
    best epoch (lowest mean validation loss) marked, the legend below the panels. Saved to `path`
    if given."""
    figure, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    folds = table["fold"].nunique()
    best = best_epochs(table)
    for row, metric in enumerate(("loss", "accuracy")):
        for col, (split, column) in enumerate((("training", metric), ("validation",
                                                                     f"val_{metric}"))):
            ax = axes[row, col]
            band = fold_band(table, column)
            for method, curve in band.groupby("method", sort=False):
                color = METHOD_COLORS.get(method)
                ax.plot(curve["epoch"], curve["mean"], METHOD_STYLES.get(method, "-"),
                        color=color, label=METHOD_LABELS.get(method, method),
                        linewidth=METHOD_WIDTHS.get(method, 1.8),
                        alpha=METHOD_ALPHAS.get(method, 1.0), zorder=1 if method == "fit" else 2)
                ax.fill_between(curve["epoch"], curve["mean"] - curve["std"],
                                curve["mean"] + curve["std"], color=color, alpha=0.12)
                at_best = curve[curve["epoch"] == best.loc[method, "epoch"]]
                ax.plot(at_best["epoch"], at_best["mean"], "o", color=color, markersize=7,
                        markerfacecolor="white", markeredgewidth=2)
            if metric == "loss":
                ax.set_yscale("log")
            ax.set_title(f"{split} {metric}", fontsize=10)
            ax.set_ylabel(metric + (" (log scale)" if metric == "loss" else ""))
            ax.grid(alpha=0.3, which="both")
            if row == 1:
                ax.set_xlabel("epoch")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(Line2D([], [], marker="o", linestyle="", color="grey",
                          markerfacecolor="white", markeredgewidth=2))
    labels.append("best epoch (lowest mean val loss)")
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9,
                  frameon=False)
    figure.suptitle(title or f"mean ± std over {folds} folds")
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    return figure
