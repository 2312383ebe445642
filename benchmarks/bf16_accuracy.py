"""Final validation accuracy of model.fit() with the article's CNN under float32 and under the
mixed_bfloat16 dtype policy, cross-validated on the same folds from the same initial weights.

Companion of ``throughput.py --methods fit_auto fit_bf16 matched_graph matched_bf16`` (the speed
side): this is what bfloat16 does to the result. Every model is built and trained inside
`helpers.tooling.speed.dtype_policy`; the matched loop equals fit under either policy
(tests/test_fit_options.py), so fit alone is cross-validated by default. Prints the final-epoch
summary and the paired comparison (bf16 minus float32, per fold) and writes the tidy per-epoch
table as CSV, with the load average before and after the run (its seconds mean little under load;
its accuracies do not depend on it).

    python benchmarks/bf16_accuracy.py           # 6 folds, 5 epochs, 6,000 images (~10 min)
    python benchmarks/bf16_accuracy.py --quick   # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO / "output" / "benchmarks" / "bf16_accuracy.csv"
POLICIES = ("float32", "mixed_bfloat16")
QUICK = {"samples": 200, "folds": 2, "epochs": 1}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", type=int, default=6000,
                        help="stratified, seeded subset of MNIST's training images")
    parser.add_argument("--folds", type=int, default=6,
                        help="k of k-fold CV (6 or more can reach p < 0.05)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["fit"],
                        help="names from helpers.training.METHODS")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--quick", action="store_true",
                        help="tiny run for CI: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    from helpers.experiments.params import (
        check_methods,
        check_output_file,
        command_line_names,
        usage_errors,
        validate_parameters,
    )

    names = command_line_names(subset="--samples")
    with usage_errors(parser):
        check_output_file("--csv", args.csv)
        # --samples is the cross-validated subset: at least 10 classes x folds
        validate_parameters(folds=args.folds, epochs=args.epochs, batch_size=args.batch_size,
                            subset=args.samples, seed=args.seed, names=names, smoke=False)
        import helpers.notebook.quiet_tensorflow  # noqa: F401 (the names load TensorFlow)

        check_methods(args.methods, names)
    return args


def main(argv=None):
    """Cross-validate under both policies; print the summary and paired comparison; write the
    CSV; return (tidy table, paired comparison rows)."""
    args = parse_args(argv)
    import datetime
    import os
    import platform

    import keras
    import pandas as pd
    import tensorflow as tf

    from helpers.data import load_mnist
    from helpers.experiments.compare import final_epoch, paired_comparison
    from helpers.tooling.benchmark_args import prepare_csv
    from helpers.tooling.speed import load_average, load_columns, policy_cross_validation

    load_at_start = load_average()
    x, y = load_mnist("train", subset=args.samples, seed=args.seed)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; {len(x)} samples, {args.folds} folds, "
          f"{args.epochs} epochs, batch size {args.batch_size}, seed {args.seed}", flush=True)
    table = policy_cross_validation(
        x, y, policies=POLICIES, methods=args.methods, folds=args.folds, epochs=args.epochs,
        batch_size=args.batch_size, seed=args.seed, verbose=1)
    final = final_epoch(table)
    summary = final.groupby("method", sort=False)[["val_accuracy", "val_loss", "seconds"]].agg(
        ["mean", "std"])
    print()
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    comparisons = []
    for method in args.methods:
        for column in ("val_accuracy", "val_loss"):
            result = paired_comparison(table, f"{method}@{POLICIES[1]}",
                                       f"{method}@{POLICIES[0]}", column)
            comparisons.append(result)
            print(f"{method}, final {column}, bf16 minus float32: "
                  f"{result['mean_difference']:+.4f} (95% CI [{result['ci_low']:+.4f}, "
                  f"{result['ci_high']:+.4f}], sign-flip p = {result['p_value']:.3f}, "
                  f"{result['folds']} folds)")
    stamp = dict(samples=args.samples, folds=args.folds, epochs=args.epochs,
                 batch_size=args.batch_size, seed=args.seed, tensorflow=tf.__version__,
                 keras=keras.__version__, cpu_count=os.cpu_count(), quick=args.quick,
                 date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 **load_columns(load_at_start, load_average()))
    table.assign(**stamp).to_csv(prepare_csv(args.csv), index=False)
    paired_csv = args.csv.with_name(args.csv.stem + "_paired.csv")
    pd.DataFrame(comparisons).assign(**stamp).to_csv(paired_csv, index=False)
    print(f"\nwrote {args.csv} and {paired_csv}")
    return table, comparisons


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # helpers importable even without `pip install -e .`
    main()
