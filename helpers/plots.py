"""Figures: learning curves as mean +- std over cross-validation folds."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

METHOD_COLORS = {"fit": "tab:blue", "naive": "tab:red", "matched": "tab:green"}
METHOD_LABELS = {
    "fit": "model.fit()",
    "naive": "article's tape loop",
    "matched": "matched tape loop",
}


def fold_band(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per method and epoch: mean and standard deviation over folds of one column."""
    return (table.groupby(["method", "epoch"], sort=False)[column]
            .agg(["mean", "std"]).fillna({"std": 0.0}).reset_index())


def plot_cv_curves(table: pd.DataFrame, title: str | None = None,
                   path: str | os.PathLike | None = None):
    """Train (solid) and validation (dashed) loss and accuracy per epoch, mean +- std over folds,
    one colour per method -- the layout of the article's Figure 4. Saved to `path` if given."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    folds = table["fold"].nunique()
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for column, style in ((metric, "-"), (f"val_{metric}", "--")):
            band = fold_band(table, column)
            for method, curve in band.groupby("method", sort=False):
                color = METHOD_COLORS.get(method)
                split = "val" if style == "--" else "train"
                label = f"{METHOD_LABELS.get(method, method)} ({split})"
                ax.plot(curve["epoch"], curve["mean"], style, color=color, label=label)
                ax.fill_between(curve["epoch"], curve["mean"] - curve["std"],
                                curve["mean"] + curve["std"], color=color, alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title or f"mean ± std over {folds} folds")
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    return figure
