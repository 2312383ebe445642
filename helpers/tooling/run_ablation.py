"""Cross-validate the ablation's 8 variants (`helpers.experiments.ablation`), then write its
tables and figure.

The article's scale (10 folds, 30 epochs, batch 64, all 60,000 training images) takes hours on
two cores; it runs resumably, fold by fold, and reads fit / naive / matched back from the
committed results (``--baseline``) instead of retraining them::

    python -m helpers.tooling.run_ablation --results-dir results/ablation --baseline
    results/full-scale --threads 1 --steps-per-execution 50
    python -m helpers.tooling.run_ablation ... --summarize-only   # tables and figure from the
    finished folds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import helpers.notebook.quiet_tensorflow  # noqa: F401 (first: no TensorFlow start-up lines)
from helpers.experiments import ablation, store
from helpers.experiments.cv import cross_validate_mnist
from helpers.experiments.params import ParameterError, check_options, check_results_folder
from helpers.threads import use_threads
from helpers.training import ABLATION_METHODS, FoldTrainer, ablation_variants


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Cross-validate the ablation's 8 variants.")
    parser.add_argument("--results-dir", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="results folder with fit/naive/matched (same settings), read back")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--subset", type=int, default=0, help="0: all 60,000 training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra-op threads (0: TensorFlow's default)")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="batches per compiled call; bit-identical results, less overhead")
    parser.add_argument("--variants", nargs="+", choices=ABLATION_METHODS, default=None,
                        metavar="VARIANT",
                        help="train only these variants (default: all 8); lets two "
                             "single-thread processes share the folds' work")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args(argv)
    check_options(parser, args, {"folds": 2, "epochs": 1, "batch_size": 1, "subset": 0, "seed": 0,
                                 "threads": 0, "steps_per_execution": 1})
    if args.baseline is not None:  # before hours of training, not after
        try:
            check_results_folder("--baseline", args.baseline)
        except ParameterError as error:
            parser.error(str(error))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not args.summarize_only:
            use_threads(args.threads)  # before TensorFlow's first op: its pools are made once
            # one model and one traced step per variant, fold after fold: bounded memory
            methods = {name: FoldTrainer(name, steps_per_execution=args.steps_per_execution)
                       for name in args.variants or ablation_variants()}
            started = time.perf_counter()
            cross_validate_mnist(methods, folds=args.folds, epochs=args.epochs,
                                 batch_size=args.batch_size, subset=args.subset, seed=args.seed,
                                 results_dir=args.results_dir,
                                 run_details={"steps_per_execution": args.steps_per_execution})
            print(f"all folds finished; this invocation took {time.perf_counter() - started:.0f} s")
        if args.baseline is not None:
            store.ResultsFolder(args.results_dir).check_same_settings(
                store.ResultsFolder(args.baseline),
                "The variants must share the baselines' folds and initial weights.")
        info = ablation.write_summary(args.results_dir, args.baseline)
    except (ParameterError, FileNotFoundError) as error:
        print(f"run_ablation: {error}", file=sys.stderr)
        return 2
    print(f"{info['finished_runs']} of {len(ABLATION_METHODS) * args.folds} (variant, fold) runs "
          f"finished; tables and figure in {args.results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
