"""Training on several devices from the command line: one process with a MirroredStrategy over
logical CPUs, or several worker processes of a MultiWorkerMirroredStrategy on this machine, each
running `helpers.training.distributed`'s loop, fit, or the one-device matched loop.

    python -m helpers.tooling.launcher --workers 2                 # MultiWorkerMirroredStrategy
    python -m helpers.tooling.launcher --replicas 2 --trainers fit loop   # MirroredStrategy, 2 CPUs

Splitting the CPU into logical devices (`split_cpu`) and starting a worker of a
``MultiWorkerMirroredStrategy`` must happen before TensorFlow initializes its devices, i.e. in a
fresh process: the command line runs every configuration in its own process(es). With
``--workers N`` it starts N worker processes on 127.0.0.1 (free ports chosen at run time), each
with its ``TF_CONFIG``; waits for them (``--timeout``); and if one fails, stops the others and
exits non-zero with that worker's error. On real machines, start the same worker command on each
host with ``TF_CONFIG`` naming every host (README, "More than one device"). TensorFlow's gRPC
server binds the worker's port on every interface (``grpc_server_lib.cc`` hard-codes "0.0.0.0:"
plus the port; there is no option), so the launcher runs the workers in a private network
namespace whose only interface is loopback (helpers.tooling.private_network; Linux, as root):
there 0.0.0.0 means 127.0.0.1 of that namespace, and nothing outside it can connect. Where no
such namespace can be made (not root, no permission to unshare), the workers run on this
machine's network, and the launcher prints a warning that their ports are reachable from other
interfaces while they run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from helpers.data import load_mnist
from helpers.experiments.params import ParameterError, check_integer, check_number
from helpers.model import ARTICLE_DROPOUT
from helpers.threads import use_threads
from helpers.tooling.private_network import LoopbackNetwork
from helpers.training import HISTORY_KEYS, Trainer, epoch_orders, train_fit, train_matched
from helpers.training.distributed import (
    build_cnn,
    distributed_train_step,
    mirrored_strategy,
    shard_by_data,
    train_distributed,
)

TRAINERS = ("loop", "fit", "matched")


# ----------------------------------------------------------------------------------------------
# One run of the command line: a model, a trainer, a strategy; results to a folder


def load_split(samples: int, val_samples: int, seed: int):
    """A stratified, seeded slice of MNIST: (x_train, y_train), (x_val, y_val)."""
    x, y = load_mnist("train", subset=samples + val_samples, seed=seed)
    return (x[:samples], y[:samples]), (x[samples:], y[samples:])


def run_trainer(trainer: str, strategy, args) -> dict:
    """Train one fresh model with `trainer` ("loop": `train_distributed` under `strategy`;
    "fit": `model.fit` under `strategy`; "matched": `train_matched` on one device, no strategy)
    on the batches `epoch_orders(samples, epochs, seed)`; return History and weights."""
    train, val = load_split(args.samples, args.val_samples, args.seed)
    orders = epoch_orders(len(train[0]), args.epochs, args.seed)
    if trainer == "matched":
        strategy = tf.distribute.get_strategy()  # the default: one device
    model = build_cnn(strategy, args.seed, args.dropout, args.l2)
    common = dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                  batch_orders=orders)
    if trainer == "loop":
        history = train_distributed(model, strategy, train, val, **common)
    elif trainer == "fit":
        history = train_fit(model, train, val, **common)
    else:
        history = train_matched(model, train, val, **common)
    return {"history": history, "weights": model.get_weights(),
            "replicas": strategy.num_replicas_in_sync}


def save_result(result: dict, path: Path) -> None:
    """History (JSON) and weights (.npz) of one run, as path.json and path.npz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".npz"), *result["weights"])
    meta = {key: value for key, value in result.items() if key != "weights"}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))


def load_result(path: Path) -> dict:
    path = Path(path)
    result = json.loads(path.with_suffix(".json").read_text())
    with np.load(path.with_suffix(".npz")) as arrays:
        result["weights"] = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    return result


def max_weight_difference(weights_a, weights_b) -> float:
    """Largest absolute difference between two lists of weight arrays."""
    return max(float(np.max(np.abs(a - b))) for a, b in zip(weights_a, weights_b, strict=True))


def max_history_difference(history_a, history_b) -> float:
    """Largest absolute difference over the History's metrics and epochs."""
    return max(float(np.max(np.abs(np.subtract(history_a[key], history_b[key]))))
               for key in HISTORY_KEYS)


# ----------------------------------------------------------------------------------------------
# Several worker processes (MultiWorkerMirroredStrategy) and their launcher


def validate_distributed_parameters(*, train_images: int, val_images: int, workers: int,
                                    timeout: float) -> None:
    """Appendix A3's own parameters (the shared ones go through
    helpers.experiments.params.validate_parameters): image counts >= 1, `workers` >= 2 (one
    worker is no cluster), `timeout` seconds > 0. A ValueError names the parameter otherwise."""
    check_integer("train_images", train_images, 1)
    check_integer("val_images", val_images, 1)
    check_integer("workers", workers, 2)
    check_number("timeout", timeout, above=0)


def tf_config(hosts: list[str], index: int) -> str:
    """The TF_CONFIG of worker `index` in a cluster of workers at `hosts` ("host:port")."""
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})


class WorkerError(RuntimeError):
    """A worker process failed (or the workers did not finish in time)."""

    def __init__(self, message: str, worker: int | None):
        super().__init__(message)
        self.worker = worker


def _worker_command(args, index: int) -> list[str]:
    command = [sys.executable, "-m", "helpers.tooling.launcher", "--worker-index", str(index),
               "--trainers", *args.trainers, "--out", str(args.out)]
    for name in ("epochs", "samples", "val_samples", "batch_size", "seed", "dropout", "l2",
                 "threads"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.fail_worker == index:
        command.append("--fail")
    return command


def launch_workers(args, log=print) -> list[dict]:
    """Start `args.workers` worker processes talking over 127.0.0.1 -- in a private network
    namespace with only a loopback interface where one can be made (helpers.tooling.private_network;
    otherwise with a warning that their ports are reachable from other interfaces) -- wait for
    all of them (at most `args.timeout` seconds), and return each worker's result for each
    trainer. On a failure or the timeout, stop every worker still running and raise WorkerError
    naming the worker and quoting the end of its error output."""
    args.out.mkdir(parents=True, exist_ok=True)
    processes, logs = [], []
    with LoopbackNetwork(args.workers) as network:
        try:
            for index in range(args.workers):
                env = dict(os.environ, TF_CONFIG=tf_config(network.hosts, index))
                env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                stderr = open(args.out / f"worker_{index}.log", "w+")  # noqa: SIM115 (closed below)
                logs.append(stderr)
                processes.append(subprocess.Popen(
                    network.prefix + _worker_command(args, index), env=env, stdout=stderr,
                    stderr=subprocess.STDOUT))
            where = "a private loopback-only network" if network.private else "this machine"
            log(f"started {args.workers} workers on {', '.join(network.hosts)} ({where}); "
                f"logs in {args.out}")
            deadline = time.monotonic() + args.timeout
            running = set(range(args.workers))
            while running:
                for index in sorted(running):
                    code = processes[index].poll()
                    if code is None:
                        continue
                    running.discard(index)
                    if code != 0:
                        raise WorkerError(f"worker {index} failed (exit code {code}): "
                                          f"{_error_line(logs[index])}\n(its output: "
                                          f"{logs[index].name})", index)
                if running and time.monotonic() > deadline:
                    raise WorkerError(f"workers {sorted(running)} did not finish within "
                                      f"{args.timeout:.0f} s", min(running))
                time.sleep(0.2)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
            for handle in logs:
                handle.close()
    return [{trainer: load_result(args.out / f"worker_{index}" / trainer)
             for trainer in args.trainers} for index in range(args.workers)]


def _error_line(handle, width: int = 300) -> str:
    """The exception line of the traceback at the end of a worker's output (``SomeError: ...``,
    cut to `width` characters) and, if its message goes on over more lines, the last of them;
    without a traceback, the last line."""
    handle.flush()
    handle.seek(0)
    lines = [line.rstrip() for line in handle if line.strip()]
    errors = [i for i, line in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    if not errors:
        return lines[-1] if lines else "(no output)"
    found = lines[errors[-1]]
    found = found if len(found) <= width else found[:width] + "..."
    if errors[-1] < len(lines) - 1:  # a message over several lines: its first and last line
        found += " [...] " + lines[-1][-width:]
    return found


def _run_worker(args) -> None:
    """Inside one worker process: join the cluster TF_CONFIG names, train, save the result (or,
    with ``--serve-epochs``, train one epoch each time asked; see `serve_epochs`)."""
    if args.fail:
        raise RuntimeError("this worker was told to fail (--fail), to check the launcher")
    use_threads(args.threads)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if args.serve_epochs:
        serve_epochs(strategy, args)
        return
    for trainer in args.trainers:
        result = run_trainer(trainer, strategy, args)
        save_result(result, args.out / f"worker_{args.worker_index}" / trainer)


EPOCH_REPLY = "epoch-seconds"


def serve_epochs(strategy, args, requests=sys.stdin, replies=sys.stdout) -> None:
    """For the throughput benchmark (helpers.tooling.speed): train the article's CNN with the loop
    one epoch (training only) each time a line arrives on `requests`, and answer
    ``epoch-seconds S``; stop at end of input. Batches come from a ``tf.data`` pipeline that
    reshuffles every epoch (the same seed on every worker, so they agree on the order)."""
    x, y = load_mnist("train", subset=args.samples, seed=args.seed)
    model = build_cnn(strategy, args.seed)
    step = distributed_train_step(model, strategy, x, y)
    dataset = (tf.data.Dataset.from_tensor_slices((x, y))
               .shuffle(len(x), seed=args.seed, reshuffle_each_iteration=True)
               .batch(args.batch_size))
    distributed = strategy.experimental_distribute_dataset(shard_by_data(dataset))
    steps = math.ceil(len(x) / args.batch_size)
    # a new iterator each epoch: the pipeline reshuffles
    trainer = Trainer(model, step, lambda epoch: itertools.repeat((iter(distributed),), steps),
                      steps=steps)
    print("ready", file=replies, flush=True)
    for epoch, _ in enumerate(requests):
        start = time.perf_counter()
        trainer.run_epoch(epoch)  # ends reading the metrics: after the last step
        print(f"{EPOCH_REPLY} {time.perf_counter() - start}", file=replies, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0,
                       help="start this many worker processes (MultiWorkerMirroredStrategy)")
    where.add_argument("--replicas", type=int, default=0,
                       help="run in this process under a MirroredStrategy over this many "
                            "logical CPU devices")
    where.add_argument("--worker-index", type=int, default=None,
                       help="be this worker of the cluster that TF_CONFIG describes (set by "
                            "the launcher; on real machines, by you on each host)")
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=["loop"],
                        help="loop: train_distributed; fit: model.fit under the strategy; "
                             "matched: train_matched on one device (--replicas only)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=640, help="training images")
    parser.add_argument("--val-samples", type=int, default=160, help="validation images")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=ARTICLE_DROPOUT,
                        help="Dropout rate of the CNN (0 to compare with one device)")
    parser.add_argument("--l2", type=float, default=0.0,
                        help="L2 penalty on every kernel (0: none, as in the article)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads per process (0: TensorFlow's default)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds to wait for the workers before stopping them")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the results (default: a new temporary folder)")
    parser.add_argument("--fail-worker", type=int, default=None,
                        help="make this worker fail at start (checks the launcher's failure path)")
    parser.add_argument("--fail", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-epochs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_index is None and not (args.workers or args.replicas):
        parser.error("give --workers N or --replicas N")
    if args.out is None and not args.serve_epochs:  # a benchmark worker writes no files
        args.out = Path(tempfile.mkdtemp(prefix="tape-vs-fit-distributed-"))
    if "matched" in args.trainers and args.workers:
        parser.error("--trainers matched runs on one device; use it with --replicas")
    try:
        for name in ("epochs", "samples", "val_samples", "batch_size"):
            check_integer(f"--{name.replace('_', '-')}", getattr(args, name), 1)
        check_number("--dropout", args.dropout, minimum=0, below=1)
    except ParameterError as error:
        parser.error(str(error))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker_index is not None:
        _run_worker(args)
        return 0
    if args.workers:
        try:
            results = launch_workers(args)
        except WorkerError as error:
            print(f"launcher: {error}", file=sys.stderr)
            return 1
        for trainer in args.trainers:
            histories = [result[trainer]["history"] for result in results]
            spread = max(max_weight_difference(results[0][trainer]["weights"], other["weights"])
                         for other in (result[trainer] for result in results[1:]))
            print(f"{trainer}: {args.workers} workers, final loss "
                  f"{[round(h['loss'][-1], 6) for h in histories]}, val_accuracy "
                  f"{[round(h['val_accuracy'][-1], 4) for h in histories]}; max |weight "
                  f"difference| between workers {spread:.3g}")
        print(f"results in {args.out}")
        return 0
    use_threads(args.threads)
    strategy = mirrored_strategy(args.replicas)
    for trainer in args.trainers:
        result = run_trainer(trainer, strategy, args)
        save_result(result, args.out / trainer)
        print(f"{trainer}: {result['replicas']} replica(s), final loss "
              f"{result['history']['loss'][-1]:.6f}, val_accuracy "
              f"{result['history']['val_accuracy'][-1]:.4f}")
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
