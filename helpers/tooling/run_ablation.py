"""Cross-validate the ablation's 8 variants (`helpers.experiments.ablation`), then write its
tables and figure.

The article's scale (10 folds, 30 epochs, batch 64, all 60,000 training images) takes hours on
two cores; it runs resumably, fold by fold, and reads fit / naive / matched back from the
committed results (``--baseline``) instead of retraining them::

    python -m helpers.tooling.run_ablation --results-dir results/ablation --baseline
    results/full-scale --threads 1 --steps-per-execution 50
    python -m helpers.tooling.run_ablation ... --summarize-only   # tables and figure from the
    finished folds

Every option is checked before TensorFlow is imported and before anything is written, the
baselines' settings included: a mistake costs a second, not hours of training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from helpers.experiments import store
from helpers.experiments.params import (
    ParameterError,
    check_options,
    check_results_folder,
    command_line_names,
    refuse,
    usage_errors,
    validate_parameters,
)

BASELINES = ("fit", "naive")  # what the variants are compared with


def check_results_and_baselines(args: argparse.Namespace) -> None:
    """The variants are compared with fit and the article's loop trained on the same folds from
    the same initial weights: `--baseline` must be a results folder made with the settings of
    this run (with --summarize-only: of the results folder), and so must `--results-dir`, if it
    holds results already; without `--baseline` the results folder itself must hold their
    runs."""
    results = store.ResultsFolder(args.results_dir)
    if args.summarize_only:
        wanted = results.settings()
    else:
        wanted = {"folds": args.folds, "epochs": args.epochs, "batch_size": args.batch_size,
                  "seed": args.seed, "subset": args.subset or None}
        results.check_settings("--results-dir", wanted)
        results.check_thread_count("--threads", args.threads)
    if args.baseline is None:
        if not all(any((args.results_dir / method).glob("fold_*.csv")) for method in BASELINES):
            refuse("--baseline", None, f"give the results folder of the baselines "
                   f"({' and '.join(BASELINES)}, e.g. results/full-scale): {args.results_dir} "
                   "holds no runs of them")
        return
    baseline = store.ResultsFolder(check_results_folder("--baseline", args.baseline))
    baseline.check_settings("--baseline", wanted)  # the variants need the baselines' folds


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
    parser.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                        help="train only these variants (default: all 8, e.g. naive+dropout, "
                             "matched-shuffle); lets two single-thread processes share the "
                             "folds' work")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args(argv)
    names = command_line_names()
    with usage_errors(parser):
        validate_parameters(folds=args.folds, epochs=args.epochs, batch_size=args.batch_size,
                            subset=args.subset, seed=args.seed, results_dir=args.results_dir,
                            names=names, smoke=False)
        check_options(args, {"threads": 0, "steps_per_execution": 1}, names)
        if args.summarize_only:
            check_results_folder("--results-dir", args.results_dir)
            if not (args.results_dir / store.RUN_INFO).is_file():
                refuse("--results-dir", str(args.results_dir), f"--summarize-only needs the "
                       f"{store.RUN_INFO} of the run that trained the variants")
        check_results_and_baselines(args)  # before hours of training, not after
        if args.variants is not None:  # last: the names load TensorFlow
            import helpers.notebook.quiet_tensorflow  # noqa: F401 (no start-up lines)
            from helpers.training import ABLATION_METHODS

            unknown = [name for name in args.variants if name not in ABLATION_METHODS]
            if unknown:
                refuse("--variants", args.variants, f"every name must be one of "
                       f"{list(ABLATION_METHODS)}; unknown: {unknown}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import helpers.notebook.quiet_tensorflow  # noqa: F401 (first: no TensorFlow start-up lines)
    from helpers.experiments import ablation
    from helpers.experiments.cv import cross_validate_mnist
    from helpers.threads import use_threads
    from helpers.training import ABLATION_METHODS, FoldTrainer, ablation_variants

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
