"""Where a training epoch's time goes, op by op: model.fit() against the tape loops.

Each method trains its own copy of the article's CNN for warm-up epochs, then epochs under
TensorFlow's profiler, the methods taking turns (`--rounds` each; the median epoch by wall time is
kept); the trace is read back (helpers/tooling/profiling.py) and the epoch's wall time is split
into op categories -- convolutions forward / weight gradient / input gradient, pooling, dropout,
optimizer, ... -- plus *idle* time when no op runs (Python, function calls, the executor between
ops). The FLOP kernels are compared with a float32 matmul measured after the profiles, and three
utilizations are printed: as run, without the idle time, and with only the FLOP kernels left (the
ceiling for any loop that runs these kernels) -- only where they can be measured (an idle machine,
epochs of 100 steps or more, none above 100%: helpers.tooling.speed.peak_problem). The load
average before and after the run is in every row. The category table goes to --csv, the per-op
table beside it (``*_ops.csv``).

    python benchmarks/op_profile.py                     # fit, matched loop, matched loop per epoch
    python benchmarks/op_profile.py --methods fit_auto fit_spe matched_graph matched_spe
    python benchmarks/op_profile.py --threads 1 --csv output/benchmarks/op_profile_1thread.csv
    python benchmarks/op_profile.py --quick              # seconds-long smoke run (CI)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO / "output" / "benchmarks" / "op_profile.csv"
DEFAULT_METHODS = ["fit_auto", "matched_graph", "matched_spe"]
QUICK = {"samples": 200, "warmup": 1, "rounds": 1, "peak_size": 1024}


def parse_args(argv=None) -> argparse.Namespace:
    from helpers.tooling.benchmark_args import benchmark_parser, parse_benchmark_args

    parser = benchmark_parser(__doc__, DEFAULT_CSV, QUICK)
    parser.add_argument("--warmup", type=int, default=2,
                        help="epochs per method run before the profiled ones (>= 1: the first "
                             "holds tracing)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="profiled epochs per method, taking turns; the median one is kept")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, metavar="METHOD",
                        help="names from helpers.tooling.speed.BENCHMARK_METHODS")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of TensorFlow's intra-op and inter-op pools (0: "
                             "TensorFlow's choice, every core); the matmul peak is measured "
                             "with the same threads")
    return parse_benchmark_args(parser, argv, QUICK, {"rounds": 1, "warmup": 1, "threads": 0})


def main(argv=None):
    """Profile every method; print its table, write the CSVs, return the category table."""
    args = parse_args(argv)
    import keras
    import pandas as pd
    import tensorflow as tf

    from helpers.threads import use_threads

    threads = use_threads(args.threads)  # before TensorFlow's first op: it makes its pools once

    from helpers.data import load_mnist
    from helpers.tooling.benchmark_args import prepare_csv, run_stamp
    from helpers.tooling.profiling import profile_rounds, utilization_bounds
    from helpers.tooling.speed import (
        BENCHMARK_METHODS,
        load_average,
        load_columns,
        machine_state,
        make_runner,
        matmul_gflops,
        peak_problem,
    )

    load_at_start = load_average()
    x, y = load_mnist("train", subset=args.samples, seed=args.seed)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; "
          f"{len(x)} samples, batch size {args.batch_size}, {args.warmup} warm-up epoch(s), then "
          f"{args.rounds} profiled epoch(s) per method, taking turns", flush=True)
    runners = {}
    for method in dict.fromkeys(args.methods):
        runners[method] = make_runner(method, x, y, batch_size=args.batch_size, seed=args.seed)
        for _ in range(args.warmup):
            runners[method].run_epoch()
    profiles = profile_rounds(runners, args.rounds)
    peak = statistics.median(matmul_gflops(args.peak_size, 5))
    load = load_columns(load_at_start, load_average())
    bounds = {method: utilization_bounds(profile, peak) for method, profile in profiles.items()}
    problem = peak_problem(load["under_load"], min(p.steps for p in profiles.values()),
                           [value for b in bounds.values() for value in b.values()])
    categories, ops = [], []
    for method, profile in profiles.items():
        table = profile.categories.assign(
            method=method, peak_gflops=peak, wall_ms_per_step=profile.wall_ms_per_step,
            samples_per_s=profile.samples / profile.wall_seconds,
            **{f"utilization_{name}_pct": math.nan if problem else 100 * value
               for name, value in bounds[method].items()},
        )
        categories.append(table)
        ops.append(profile.ops.assign(method=method))

        print(f"\n{method}: {BENCHMARK_METHODS[method]}")
        print(f"  {profile.wall_ms_per_step:.2f} ms per step of {args.batch_size} "
              f"({table['samples_per_s'].iloc[0]:.0f} samples/s while profiled, median epoch)")
        for row in table.itertuples():
            print(f"  {row.category:<31} {row.ms_per_step:6.3f} ms "
                  f"{100 * row.share_of_wall:5.1f}%")
        if problem is None:
            shares = {name: 100 * value for name, value in bounds[method].items()}
            print(f"  utilization of the matmul peak ({peak:.0f} GFLOP/s): "
                  f"{shares['as_run']:.1f}% as run, {shares['without_idle']:.1f}% without the "
                  f"idle time, {shares['flop_kernels_only']:.1f}% with only the conv and dense "
                  "kernels", flush=True)
    stamp = run_stamp(args, warmup=args.warmup, rounds=args.rounds,
                      threads=threads["intra_op_threads"])
    result = pd.concat(categories, ignore_index=True).assign(**stamp, **load)
    print()
    if problem:
        print(f"no share of the matmul peak: {problem}")
    print(machine_state(result))
    result.to_csv(prepare_csv(args.csv), index=False)
    ops_csv = args.csv.with_name(args.csv.stem + "_ops.csv")
    pd.concat(ops, ignore_index=True).assign(**stamp, **load).to_csv(ops_csv, index=False)
    print(f"wrote {args.csv} and {ops_csv}")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # helpers importable even without `pip install -e .`
    main()
