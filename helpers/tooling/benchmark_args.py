"""Command-line options and run stamp shared by the scripts in benchmarks/."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path


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
                         at_least_one: tuple[str, ...]) -> argparse.Namespace:
    """Parse, apply ``--quick``, and refuse values below 1 for the `at_least_one` options (and
    for --samples, --batch-size, --peak-size) and sample counts MNIST does not have."""
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    for name in ("samples", "batch_size", "peak_size", *at_least_one):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.samples < 20 or args.samples > 60000:
        parser.error("--samples must be from 20 to 60000 (MNIST's training images)")
    return args


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
