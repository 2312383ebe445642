"""The held-out test from the command line (`helpers.experiments.heldout`): each method trained
once on the training images, tested on the 10,000 MNIST test images; resumable, method by method,
and ``--threads 1`` spares a shared machine::

    python -m helpers.tooling.run_heldout results/held-out-test --epochs 30 --batch-size 64
    --threads 1

Each method's last epoch goes to ``test_scores.csv`` in the results folder. Every option is
checked before TensorFlow is imported and before anything is written.
"""

from __future__ import annotations

import argparse
import sys

from helpers.experiments import store
from helpers.experiments.params import (
    ParameterError,
    check_methods,
    check_options,
    command_line_names,
    usage_errors,
    validate_parameters,
)

COMMITTED_METHODS = ["fit", "naive", "matched"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train each method once on the training images and test it on the 10,000 "
                    "MNIST test images; resumable.")
    parser.add_argument("results_dir")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--subset", type=int, default=0, help="0: all 60,000 training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=COMMITTED_METHODS, metavar="METHOD",
                        help="names from helpers.training.METHODS (default: the three the "
                             "committed run trained)")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra- and inter-op threads (0: TensorFlow's default)")
    args = parser.parse_args(argv)
    names = command_line_names("results_dir")
    with usage_errors(parser):
        check_options(args, {"threads": 0}, names)
        # no folds: every method trains on all `subset` images (trains_on_all)
        validate_parameters(epochs=args.epochs, batch_size=args.batch_size, subset=args.subset,
                            seed=args.seed, results_dir=args.results_dir, trains_on_all=True,
                            names=names, smoke=False)
        results = store.ResultsFolder(args.results_dir)
        results.check_settings("results_dir", {
            "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
            "subset": args.subset or None})
        results.check_thread_count("--threads", args.threads)
        import helpers.notebook.quiet_tensorflow  # noqa: F401 (the names load TensorFlow)

        check_methods(args.methods, names)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import helpers.notebook.quiet_tensorflow  # noqa: F401 (first: no TensorFlow start-up lines)
    from helpers.experiments.heldout import final_test_scores, train_and_test
    from helpers.threads import use_threads

    use_threads(args.threads)  # before TensorFlow's first op: its pools are made once
    try:
        table = train_and_test(args.methods, epochs=args.epochs, batch_size=args.batch_size,
                               subset=args.subset, seed=args.seed, results_dir=args.results_dir)
    except ParameterError as error:
        print(f"run_heldout: {error}", file=sys.stderr)
        return 2
    scores = final_test_scores(table)
    store.ResultsFolder(args.results_dir).write_table("test_scores.csv", scores, index=True)
    print(scores.to_string(float_format="%.4f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
