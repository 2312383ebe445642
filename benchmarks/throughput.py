"""Training throughput of model.fit() and of GradientTape loops on MNIST with the article's CNN.

Every method trains its own model; the methods take turns epoch by epoch (round-robin, order
rotated each round) so machine noise hits them alike; the first epoch of each is a warm-up
(tracing, XLA compilation) and is not counted. Throughput is the median over the measured epochs,
training only (no validation), and every ratio is to ``model.fit`` with ``jit_compile="auto"``
measured in the same run. Achieved GFLOP/s come from an analytic FLOP count (3 x the forward
pass's conv and dense FLOPs) and are compared with a float32 matmul measured in the same run --
only on an idle machine, over epochs of 100 steps or more, and never above 100%. The load average
before and after the run is in every row; above 1.5 the run is labelled as measured under load.
See helpers/tooling/speed.py for the details.

    python benchmarks/throughput.py                    # every method (~15 min on 2 idle cores)
    python benchmarks/throughput.py --quick            # seconds-long smoke run (CI)
    python benchmarks/throughput.py --methods fit_auto matched_graph matched_xla --epochs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO / "output" / "benchmarks" / "throughput.csv"
QUICK = {"samples": 128, "epochs": 2, "warmup": 1, "repeats": 1, "peak_size": 1024}


def parse_args(argv=None) -> argparse.Namespace:
    from helpers.tooling.benchmark_args import benchmark_parser, parse_benchmark_args

    parser = benchmark_parser(__doc__, DEFAULT_CSV, QUICK)
    parser.add_argument("--epochs", type=int, default=5,
                        help="measured epochs per method, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1,
                        help="epochs per method run first and not counted")
    parser.add_argument("--repeats", type=int, default=1,
                        help="times the whole round-robin is run, with new models each time; "
                             "the median is over all repeats' measured epochs")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help="names from helpers.tooling.speed.BENCHMARK_METHODS (default all; "
                             "fit_auto is always added, as the reference)")
    parser.add_argument("--peak-runs", type=int, default=1,
                        help="matmuls timed after every epoch of every method")
    return parse_benchmark_args(parser, argv, QUICK,
                                {"epochs": 1, "warmup": 0, "repeats": 1, "peak_runs": 1})


def main(argv=None):
    """Run the benchmark; print the table, write the CSV, return the summary DataFrame."""
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    from helpers.data import load_mnist
    from helpers.tooling.benchmark_args import prepare_csv, run_stamp
    from helpers.tooling.speed import format_table, measure, summarize_throughput

    x, y = load_mnist("train", subset=args.samples, seed=args.seed)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; {len(x)} samples, batch size "
          f"{args.batch_size}, {args.warmup} warm-up + {args.epochs} measured epochs per method, "
          f"{args.repeats} repeat(s)", flush=True)
    measurement = measure(
        x, y, methods=args.methods, batch_size=args.batch_size, epochs=args.epochs,
        warmup=args.warmup, repeats=args.repeats, seed=args.seed, peak_size=args.peak_size,
        peak_runs=args.peak_runs, log=lambda line: print(line, flush=True),
    )
    summary = summarize_throughput(measurement)
    print()
    print(format_table(summary))
    table = summary.assign(**run_stamp(args, epochs=args.epochs, warmup=args.warmup,
                                       repeats=args.repeats))
    table.to_csv(prepare_csv(args.csv), index=False)
    print(f"\nwrote {args.csv}")
    return table


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # helpers importable even without `pip install -e .`
    main()
