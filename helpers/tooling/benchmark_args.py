"""Command-line options and run stamp shared by the scripts in benchmarks/.

Their options are checked by helpers.experiments.params's checkers before TensorFlow is imported
(the method names, which come from helpers.tooling.speed, last) and before anything is written;
a value not allowed is a usage error (exit status 2) naming the option."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from collections.abc import Mapping
from pathlib import Path

from helpers.experiments.params import (
    check_integer,
    check_options,
    check_output_file,
    command_line_names,
    prepare_output_dir,
    refuse,
    usage_errors,
)

MNIST_TRAIN_IMAGES = 60_000


def benchmark_parser(doc: str, default_csv: Path, quick: dict) -> argparse.ArgumentParser:
    """A parser with the options every benchmark has: data size, batch size, seed, the matmul
    that measures the peak, where the CSV goes, and ``--quick`` (the `quick` settings, for CI).
    The first paragraph of `doc` (the script's docstring) is the description."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=12800,
                        help="MNIST training images used (a stratified subset)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="matrix size of the float32 matmul that measures the peak")
    parser.add_argument("--csv", type=Path, default=default_csv, help="where to write the table")
    parser.add_argument("--quick", action="store_true",
                        help="tiny configuration for CI: " + ", ".join(
                            f"{k}={v}" for k, v in quick.items()) + " (overrides those options)")
    return parser


def parse_benchmark_args(parser: argparse.ArgumentParser, argv, quick: dict,
                         minimums: Mapping[str, int]) -> argparse.Namespace:
    """Parse, apply ``--quick``, and check every option: the `minimums` (option's dest -> least
    value) and --batch-size and --peak-size >= 1, --samples from 20 to MNIST's 60,000 training
    images, --csv a file in a folder the project may write to, the --methods names (after the
    others: they load TensorFlow)."""
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    names = command_line_names()
    with usage_errors(parser):
        check_integer("--samples", args.samples, 20, MNIST_TRAIN_IMAGES)
        check_options(args, {"batch_size": 1, "peak_size": 1, **minimums}, names)
        check_output_file("--csv", args.csv)
        if args.methods is not None:
            import helpers.notebook.quiet_tensorflow  # noqa: F401 (the names load TensorFlow)
            from helpers.tooling.speed import BENCHMARK_METHODS

            unknown = [name for name in args.methods if name not in BENCHMARK_METHODS]
            if unknown:
                refuse("--methods", args.methods, f"every name must be one of "
                       f"{list(BENCHMARK_METHODS)}; unknown: {unknown}")
    return args


def prepare_csv(path: Path) -> Path:
    """Make the folder of the CSV `path` (checked by `parse_benchmark_args`); returns `path`."""
    prepare_output_dir(path.parent)
    return path


def run_stamp(args: argparse.Namespace, **settings) -> dict:
    """The columns every benchmark CSV row carries: the run's settings and the machine."""
    import keras
    import tensorflow as tf

    return dict(
        samples=args.samples, batch_size=args.batch_size, **settings, seed=args.seed,
        peak_size=args.peak_size, tensorflow=tf.__version__, keras=keras.__version__,
        cpu_count=os.cpu_count(), machine=platform.machine(), quick=args.quick,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
