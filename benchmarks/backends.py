"""Training speed of fit and of the matched loop under Keras' TensorFlow and JAX backends, in one
interleaved run: ratios to fit under TensorFlow (the default backend).

Four methods train the article's CNN on MNIST: fit under TensorFlow (the reference), fit under
JAX, the matched JAX loop (helpers.training.jax_loop.JaxLoop) and the matched TensorFlow loop
(helpers.training.tape_loop_trainer). Keras picks its backend once per process, so each backend
runs in its own worker process, which builds its two models and trains one epoch of one of them
when the parent asks. The parent asks the four methods in turn, one epoch each, rotating the
order every round, so that machine noise hits them alike; only one process computes at a time.
The first `--warmup` epochs of each method (tracing, XLA compilation) are not counted. Training
only, no validation. Each round gives each method's ratio of epoch time to TensorFlow fit's; the
table has the median and the range over rounds (overlapping ranges: "about as fast"), and the
load average, which should be below 1.5 (the table says "under load" otherwise).

    python benchmarks/backends.py                 # the measurement (a few minutes when idle)
    python benchmarks/backends.py --quick         # seconds-long smoke run
    python benchmarks/backends.py --csv results/benchmarks/backends.csv   # the committed file
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO / "output" / "benchmarks" / "backends.csv"
QUICK = {"samples": 256, "epochs": 2, "warmup": 1}
METHODS = {  # name -> (backend, what it is)
    "tf_fit": ("tensorflow", "model.fit, TensorFlow backend (the reference)"),
    "jax_fit": ("jax", "model.fit, JAX backend"),
    "jax_matched": ("jax", "the matched JAX loop (jax_loop.JaxLoop)"),
    "tf_matched": ("tensorflow", "the matched tape loop, TensorFlow backend (tape_loop_trainer)"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", type=int, default=6400,
                        help="MNIST training images used (a stratified subset)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8,
                        help="measured epochs (rounds) per method, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1,
                        help="epochs per method run first and not counted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="where to write the table")
    parser.add_argument("--quick", action="store_true",
                        help="tiny configuration: " + ", ".join(
                            f"{k}={v}" for k, v in QUICK.items()) + " (overrides those options)")
    parser.add_argument("--worker", choices=("tensorflow", "jax"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    for name in ("samples", "batch_size", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if not 20 <= args.samples <= 60000:
        parser.error("--samples must be from 20 to 60000 (MNIST's training images)")
    return args


def worker(backend: str, args: argparse.Namespace) -> None:
    """One backend's two methods: reads {"method", "epoch"} lines on stdin, trains that epoch,
    answers its {"seconds"} on stdout."""
    from helpers.data import load_mnist
    from helpers.model import create_cnn
    from helpers.training.fit import EpochTimer

    x, y = load_mnist("train", subset=args.samples, seed=args.seed)
    timer = EpochTimer()
    epochs = {}
    for method, (method_backend, _) in METHODS.items():
        if method_backend != backend:
            continue
        model = create_cnn(seed=args.seed)
        if method.endswith("_fit"):
            def fit_epoch(epoch, model=model):
                # fit's epoch as its callbacks see it (as benchmarks/throughput.py times fit):
                # without fit's set-up of each call, which fit(epochs=N) pays once
                model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=True, verbose=0,
                          callbacks=[timer])
                return timer.seconds[0]
            epochs[method] = fit_epoch
        else:
            if backend == "jax":
                from helpers.training.jax_loop import JaxLoop

                loop = JaxLoop(model, (x, y), None, batch_size=args.batch_size, seed=args.seed)
            else:
                from helpers.training import tape_loop_trainer

                loop = tape_loop_trainer(model, (x, y), None, batch_size=args.batch_size,
                                         seed=args.seed)

            def loop_epoch(epoch, loop=loop):  # ends reading the metrics: after the last step
                started = time.perf_counter()
                loop.run_epoch(epoch)
                return time.perf_counter() - started
            epochs[method] = loop_epoch
    print(json.dumps({"ready": sorted(epochs)}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps({"seconds": epochs[request["method"]](request["epoch"])}), flush=True)


def start_worker(backend: str, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, __file__, *argv, "--worker", backend], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(process: subprocess.Popen, request: dict | None = None) -> dict:
    if request is not None:
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"a benchmark worker stopped (exit status {process.wait()})")
    return json.loads(line)


def main(argv=None):
    """Run the benchmark; print the table, write the CSV, return it as a DataFrame."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args)
        return None
    import numpy as np
    import pandas as pd

    worker_argv = [a for a in argv if a != "--quick"] + [
        f"--samples={args.samples}", f"--batch-size={args.batch_size}", f"--seed={args.seed}"]
    load_before = os.getloadavg()[0]
    workers = {backend: start_worker(backend, worker_argv) for backend in ("tensorflow", "jax")}
    try:
        for process in workers.values():
            ask(process)  # "ready": data loaded, models built
        names = list(METHODS)
        seconds = {name: [] for name in names}
        for round_ in range(args.warmup + args.epochs):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                answer = ask(workers[METHODS[name][0]], {"method": name, "epoch": round_})
                seconds[name].append(answer["seconds"])
            print(f"round {round_ + 1}/{args.warmup + args.epochs}"
                  f"{' (warm-up)' if round_ < args.warmup else ''}: " + ", ".join(
                      f"{name} {seconds[name][-1]:.2f} s" for name in names), flush=True)
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait(timeout=60)
    load_after = os.getloadavg()[0]
    measured = {name: np.array(values[args.warmup:]) for name, values in seconds.items()}
    ratios = {name: measured[name] / measured["tf_fit"] for name in names}
    from importlib import metadata

    from helpers.tooling.speed import LOAD_LIMIT, load_columns  # the project's load rule

    load = load_columns(load_before, load_after)

    table = pd.DataFrame([{
        "method": name, "description": METHODS[name][1],
        "seconds_per_epoch_median": float(np.median(measured[name])),
        "samples_per_s": args.samples / float(np.median(measured[name])),
        "epoch_time_ratio_to_tf_fit": float(np.median(ratios[name])),
        "ratio_min": float(ratios[name].min()), "ratio_max": float(ratios[name].max()),
        "speed_relative_to_tf_fit": float(1 / np.median(ratios[name])),
        "warmup_seconds": float(sum(seconds[name][:args.warmup])),
        "epochs_measured": len(measured[name]),
    } for name in names]).assign(
        samples=args.samples, batch_size=args.batch_size, warmup=args.warmup, seed=args.seed,
        tensorflow=metadata.version("tensorflow"), keras=metadata.version("keras"),
        jax=metadata.version("jax"), cpu_count=os.cpu_count(),
        **load, quick=args.quick,
        date=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    print()
    print(table[["method", "seconds_per_epoch_median", "epoch_time_ratio_to_tf_fit", "ratio_min",
                 "ratio_max"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"load average {load_before:.2f} before, {load_after:.2f} after"
          + (f": MEASURED UNDER LOAD (above {LOAD_LIMIT}); re-run on an idle machine"
             if load["under_load"] else ""))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    print(f"\nwrote {args.csv}")
    return table


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # helpers importable even without `pip install -e .`
    main()
