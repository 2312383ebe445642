"""Summaries of cross-validation tables and paired comparisons between methods.

Folds are the unit of pairing: every method is trained on the same folds from the same initial
weights, so for each fold the difference between two methods' final validation scores is one
paired observation.

The test is an exact sign-flip permutation test on those differences (all 2**k sign patterns):
under "no difference" each fold's difference is as likely positive as negative. It assumes no
normality, which k = 6..10 folds cannot check. Its smallest attainable two-sided p-value is
2 / 2**k, so at least 6 folds are needed to ever reach p < 0.05.

The 95% confidence interval of the mean difference uses Student's t with Nadeau & Bengio's
(2003) correction for cross-validation: folds share most of their training data, so the plain
paired t interval is too narrow; the variance factor 1/k is replaced by 1/k + n_val/n_train
(= 1/k + 1/(k-1) for k-fold). Effect size: Cohen's d_z = mean difference / its standard deviation.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats


def final_epoch(table: pd.DataFrame) -> pd.DataFrame:
    """The last epoch's row for every method and fold."""
    last = table.groupby(["method", "fold"], sort=False)["epoch"].transform("max")
    return table[table["epoch"] == last].reset_index(drop=True)


def best_epoch(table: pd.DataFrame) -> pd.DataFrame:
    """For every method and fold, the row of the epoch with the lowest validation loss."""
    rows = table.groupby(["method", "fold"], sort=False)["val_loss"].idxmin()
    return table.loc[rows].reset_index(drop=True)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per method (mean and std over folds): final-epoch and best-epoch validation loss and
    accuracy, the epoch where validation loss is lowest, how far validation loss has risen above
    its minimum by the last epoch (overfitting), and seconds per epoch."""
    final, best = final_epoch(table), best_epoch(table)
    per_fold = pd.DataFrame({
        "method": final["method"],
        "final_val_loss": final["val_loss"],
        "final_val_accuracy": final["val_accuracy"],
        "best_val_loss": best["val_loss"].to_numpy(),
        "best_val_accuracy": best["val_accuracy"].to_numpy(),
        "best_epoch": best["epoch"].to_numpy(),
        "val_loss_rise": final["val_loss"].to_numpy() - best["val_loss"].to_numpy(),
        "final_train_loss": final["loss"],
    })
    seconds = table.groupby(["method", "fold"], sort=False)["seconds"].mean().reset_index()
    per_fold["seconds_per_epoch"] = seconds["seconds"].to_numpy()
    summary = per_fold.groupby("method", sort=False).agg(["mean", "std"])
    summary.columns = [f"{column}_{stat}" for column, stat in summary.columns]
    return summary


def sign_flip_p_value(differences: np.ndarray) -> float:
    """Exact two-sided p-value of the paired sign-flip permutation test (mean difference)."""
    differences = np.asarray(differences, dtype=float)
    observed = abs(differences.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(differences))))
    flipped = np.abs((signs * differences).mean(axis=1))
    # A tiny tolerance so that floating-point ties with the observed value count as "as extreme".
    return float(np.mean(flipped >= observed - 1e-12))


def paired_difference(differences) -> dict:
    """Mean of paired per-fold differences with its Nadeau-Bengio-corrected 95% CI, Cohen's d_z
    and the exact sign-flip p-value."""
    differences = np.asarray(differences, dtype=float)
    k = len(differences)
    mean = float(differences.mean()) if k else float("nan")
    sd = float(differences.std(ddof=1)) if k > 1 else float("nan")
    half_width = float("nan")
    if k > 1:
        corrected_se = sd * np.sqrt(1 / k + 1 / (k - 1))
        half_width = float(stats.t.ppf(0.975, k - 1) * corrected_se)
    return {
        "mean": mean, "ci_low": mean - half_width, "ci_high": mean + half_width,
        "cohens_dz": mean / sd if sd > 0 else float("nan"),
        "p_value": sign_flip_p_value(differences) if k > 0 else float("nan"),
    }


RISE = "val_loss_rise"  # not a History column: final minus lowest val_loss of a fold's run


def per_fold(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """A fold x method table of `column` at the final epoch, or, for `RISE`, of how far each
    run's validation loss rose after its lowest value (0 if the last epoch is the lowest)."""
    final = final_epoch(table)
    if column != RISE:
        return final.pivot(index="fold", columns="method", values=column)
    lowest = table.groupby(["method", "fold"])["val_loss"].min()
    rise = final.set_index(["method", "fold"])["val_loss"] - lowest
    return rise.unstack("method")


def paired_comparison(table: pd.DataFrame, method_a: str, method_b: str, column: str) -> dict:
    """Compare `column` at the final epoch (or the val-loss rise, `RISE`), method_a minus
    method_b, paired by fold."""
    paired = per_fold(table, column)[[method_a, method_b]].dropna()
    differences = (paired[method_a] - paired[method_b]).to_numpy()
    k = len(differences)
    result = paired_difference(differences)
    return {
        "column": column, "a": method_a, "b": method_b, "folds": k,
        "mean_difference": result["mean"],
        "ci_low": result["ci_low"], "ci_high": result["ci_high"],
        "cohens_dz": result["cohens_dz"],
        "p_value": result["p_value"],
        "smallest_possible_p": 2 / 2**k if k > 0 else float("nan"),
        "a_better_in": int(np.sum(differences < 0 if "loss" in column else differences > 0)),
    }


def verdict(result: dict, labels: dict[str, str], alpha: float = 0.05) -> str:
    """One sentence, generated from the numbers, on whether two methods are distinguishable."""
    a, b = labels.get(result["a"], result["a"]), labels.get(result["b"], result["b"])
    what = ("val loss rise after the best epoch" if result["column"] == RISE
            else "final " + result["column"].replace("_", " "))
    better = "lower" if "loss" in result["column"] else "higher"
    numbers = (f"mean difference {result['mean_difference']:+.4f}, 95% CI "
               f"[{result['ci_low']:+.4f}, {result['ci_high']:+.4f}], d_z = "
               f"{result['cohens_dz']:+.2f}, sign-flip p = {result['p_value']:.3f} over "
               f"{result['folds']} folds")
    if result["p_value"] < alpha and not (result["ci_low"] <= 0 <= result["ci_high"]):
        direction = "higher" if result["mean_difference"] > 0 else "lower"
        return (f"{a} vs {b}, {what}: distinguishable -- {a}'s is {direction} by "
                f"{abs(result['mean_difference']):.4f} ({numbers}); {a} has the {better} "
                f"{what} in {result['a_better_in']} of {result['folds']} folds.")
    if result["smallest_possible_p"] >= alpha:
        return (f"{a} vs {b}, {what}: cannot be distinguished with {result['folds']} "
                f"folds -- the "
                f"smallest p-value the test can give is {result['smallest_possible_p']:.3f} "
                f"({numbers}).")
    return f"{a} vs {b}, {what}: not distinguishable at the {alpha:.0%} level ({numbers})."
