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

Every worker checkpoints each trainer after every epoch (`helpers.training.checkpoints`, in
``<out>/worker_<i>/checkpoints/<trainer>``). With ``--restarts N``, when a worker dies the
launcher stops the others, rolls every worker back to the last epoch all of them saved, and
starts the group again, at most N times, saying so in one line per restart; the resumed run ends
with the weights and History of an uninterrupted one (tests/test_distributed.py). Without it, a
failure stops everything. Every option is checked before TensorFlow is imported and before
anything is written; the workers and the in-process run import TensorFlow without its C++
start-up lines (`helpers.notebook.quiet_tensorflow`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from helpers.data import NUM_CLASSES, load_mnist
from helpers.experiments.params import (
    check_integer,
    check_number,
    check_output_folder,
    command_line_names,
    prepare_output_dir,
    refuse,
    usage_errors,
)
from helpers.tooling.private_network import LoopbackNetwork

# TensorFlow is imported by the functions that need it (through helpers.notebook.quiet_tensorflow):
# the launcher checks its options, starts and watches workers without it.

TRAINERS = ("loop", "fit", "matched")
MNIST_TRAIN_IMAGES = 60_000


# ----------------------------------------------------------------------------------------------
# One run of the command line: a model, a trainer, a strategy; results to a folder


def load_split(samples: int, val_samples: int, seed: int):
    """A stratified, seeded slice of MNIST: (x_train, y_train), (x_val, y_val)."""
    x, y = load_mnist("train", subset=samples + val_samples, seed=seed)
    return (x[:samples], y[:samples]), (x[samples:], y[samples:])


def run_trainer(trainer: str, strategy, args, checkpoints: Path | None = None) -> dict:
    """Train one fresh model with `trainer` ("loop": `train_distributed` under `strategy`;
    "fit": `model.fit` under `strategy`; "matched": `train_matched` on one device, no strategy)
    on the batches `epoch_orders(samples, epochs, seed)`; return History and weights. With a
    `checkpoints` folder, through `train_resumable`: saved after every epoch, resumed from the
    last saved epoch."""
    from helpers.notebook.quiet_tensorflow import tf
    from helpers.training import epoch_orders, train_fit, train_matched
    from helpers.training.checkpoints import train_resumable
    from helpers.training.distributed import build_cnn, train_distributed

    def train_distributed_loop(model, train_data, val_data, **options):
        return train_distributed(model, strategy, train_data, val_data, **options)

    train, val = load_split(args.samples, args.val_samples, args.seed)
    orders = epoch_orders(len(train[0]), args.epochs, args.seed)
    if trainer == "matched":
        strategy = tf.distribute.get_strategy()  # the default: one device
    dropout = {} if args.dropout is None else {"dropout": args.dropout}  # None: the article's
    model = build_cnn(strategy, args.seed, l2=args.l2, **dropout)
    common = dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                  batch_orders=orders)
    train_function = {"loop": train_distributed_loop, "fit": train_fit,
                      "matched": train_matched}[trainer]
    if checkpoints is None:
        history = train_function(model, train, val, **common)
    else:
        with strategy.scope():  # the optimizer's variables are the strategy's, as fit makes them
            model.optimizer.build(model.trainable_variables)
        history = train_resumable(train_function, model, train, val, directory=checkpoints,
                                  callbacks=[epoch_line(trainer)], **common)
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
    from helpers.training import HISTORY_KEYS

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
    """A worker process failed (or the workers did not finish in time): `worker` is its index,
    `died` whether it ended by itself (an exit code or a signal) rather than by the timeout."""

    def __init__(self, message: str, worker: int | None, died: bool = True):
        super().__init__(message)
        self.worker, self.died = worker, died


def _worker_command(args, index: int) -> list[str]:
    command = [sys.executable, "-m", "helpers.tooling.launcher", "--worker-index", str(index),
               "--trainers", *args.trainers, "--out", str(args.out)]
    for name in ("epochs", "samples", "val_samples", "batch_size", "seed", "dropout", "l2",
                 "threads"):
        if getattr(args, name) is not None:  # a --dropout not given: the article's
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.fail_worker == index:
        command.append("--fail")
    return command


def how_it_ended(returncode: int) -> str:
    """A process's end in words: ``exit code 1``, ``killed by signal 9 (SIGKILL)``."""
    if returncode >= 0:
        return f"exit code {returncode}"
    number = -returncode
    try:
        return f"killed by signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"killed by signal {number}"


def checkpoint_dir(out: Path, worker: int, trainer: str) -> Path:
    """Where worker `worker` keeps `trainer`'s checkpoints."""
    return out / f"worker_{worker}" / "checkpoints" / trainer


def saved_epochs(directory: Path) -> list[int]:
    """The epochs whose checkpoints are complete in `directory` (the ones its ``checkpoint``
    state file lists: ``CheckpointManager`` updates it only after a checkpoint's files are
    written), oldest first."""
    from helpers.notebook.quiet_tensorflow import tf

    state = tf.train.get_checkpoint_state(str(directory))
    paths = state.all_model_checkpoint_paths if state is not None else []
    return sorted(int(path.rsplit("-", 1)[1]) for path in paths)


def roll_back_to_common_epoch(args) -> dict[str, int]:
    """Make every worker resume each trainer from the last epoch all workers saved: a worker
    that got further (one epoch at most: they train in lockstep) has its later checkpoints
    removed. Returns trainer -> that epoch (0: from the start)."""
    from helpers.notebook.quiet_tensorflow import tf

    common = {}
    for trainer in args.trainers:
        folders = [checkpoint_dir(args.out, index, trainer) for index in range(args.workers)]
        saved = [saved_epochs(folder) for folder in folders]
        common[trainer] = min((epochs[-1] if epochs else 0) for epochs in saved)
        for folder, epochs in zip(folders, saved, strict=True):
            later = [epoch for epoch in epochs if epoch > common[trainer]]
            if not later:
                continue
            kept = [f"ckpt-{epoch}" for epoch in epochs if epoch <= common[trainer]]
            if kept:
                tf.compat.v1.train.update_checkpoint_state(str(folder), kept[-1], kept)
            else:
                (folder / "checkpoint").unlink()
            for epoch in later:
                for file in folder.glob(f"ckpt-{epoch}.*"):
                    file.unlink()
    return common


def launch_workers(args, log=print) -> list[dict]:
    """Start `args.workers` worker processes talking over 127.0.0.1 -- in a private network
    namespace with only a loopback interface where one can be made (helpers.tooling.private_network;
    otherwise with a warning that their ports are reachable from other interfaces) -- wait for
    all of them (at most `args.timeout` seconds per start), and return each worker's result for
    each trainer. When a worker dies, stop every worker still running; then, up to
    `args.restarts` times, roll them back to the last epoch all of them saved and start them
    again (one line to `log` per restart); after that, raise WorkerError naming the worker, how
    it ended and the end of its output. A timeout raises WorkerError at once."""
    prepare_output_dir(args.out)
    for attempt in range(args.restarts + 1):
        try:
            _run_workers(args, attempt, log)
            break
        except WorkerError as error:
            if not error.died or attempt == args.restarts:
                raise
            resumed = roll_back_to_common_epoch(args)
            where = ", ".join(f"{trainer} from epoch {epoch}" for trainer, epoch in
                              resumed.items())
            log(f"{error.args[0].splitlines()[0]}; restart {attempt + 1} of {args.restarts}: "
                f"every worker resumes {where} (the last epoch all of them saved)")
    return [{trainer: load_result(args.out / f"worker_{index}" / trainer)
             for trainer in args.trainers} for index in range(args.workers)]


def _run_workers(args, attempt: int, log) -> None:
    """One start of the group (see `launch_workers`); the logs get a line per restart."""
    processes, logs = [], []
    with LoopbackNetwork(args.workers) as network:
        try:
            for index in range(args.workers):
                env = dict(os.environ, TF_CONFIG=tf_config(network.hosts, index))
                env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                # one log per worker over all starts (closed below)
                output = open(args.out / f"worker_{index}.log", "a+" if attempt else "w+")  # noqa: SIM115
                if attempt:
                    output.write(f"--- restart {attempt} ---\n")
                    output.flush()
                logs.append(output)
                processes.append(subprocess.Popen(
                    network.prefix + _worker_command(args, index), env=env, stdout=output,
                    stderr=subprocess.STDOUT))
            if not attempt:
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
                        raise WorkerError(f"worker {index} failed ({how_it_ended(code)}): "
                                          f"{last_meaningful_lines(logs[index])}\n(its output: "
                                          f"{logs[index].name})", index)
                if running and time.monotonic() > deadline:
                    raise WorkerError(f"workers {sorted(running)} did not finish within "
                                      f"{args.timeout:.0f} s", min(running), died=False)
                time.sleep(0.05)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
            for handle in logs:
                handle.close()


def last_meaningful_lines(handle, width: int = 300) -> str:
    """What a failed worker's output ends with, TensorFlow's start-up lines left out
    (`helpers.notebook.quiet_tensorflow.is_start_up_line`): the exception line of a traceback
    (``SomeError: ...``, cut to `width` characters) and, if its message goes on over more lines,
    the last of them; without a traceback, the last two lines (of the last start)."""
    from helpers.notebook.quiet_tensorflow import is_start_up_line  # loads TensorFlow

    handle.flush()
    handle.seek(0)
    lines = [line.rstrip() for line in handle if line.strip() and not is_start_up_line(line)]
    restarts = [i for i, line in enumerate(lines) if line.startswith("--- restart ")]
    lines = lines[restarts[-1] + 1:] if restarts else lines
    errors = [i for i, line in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    if not errors:
        return " | ".join(line[-width:] for line in lines[-2:]) if lines else "(no output)"
    found = lines[errors[-1]]
    found = found if len(found) <= width else found[:width] + "..."
    if errors[-1] < len(lines) - 1:  # a message over several lines: its first and last line
        found += " [...] " + lines[-1][-width:]
    return found


def epoch_line(trainer: str):
    """A callback that says in the worker's log which epoch of `trainer` has finished."""
    import keras

    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
        f"{trainer}: epoch {epoch + 1} finished, loss {logs['loss']:.6f}", flush=True))


def _run_worker(args) -> None:
    """Inside one worker process: join the cluster TF_CONFIG names, train (each trainer
    checkpointed every epoch, resumed from its last checkpoint), save the result (or, with
    ``--serve-epochs``, train one epoch each time asked; see `serve_epochs`)."""
    if args.fail:
        raise RuntimeError("this worker was told to fail (--fail), to check the launcher")
    from helpers.notebook.quiet_tensorflow import tf
    from helpers.threads import use_threads

    use_threads(args.threads)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if args.serve_epochs:
        serve_epochs(strategy, args)
        return
    for trainer in args.trainers:
        result = run_trainer(trainer, strategy, args,
                             checkpoints=checkpoint_dir(args.out, args.worker_index, trainer))
        save_result(result, args.out / f"worker_{args.worker_index}" / trainer)


EPOCH_REPLY = "epoch-seconds"


def serve_epochs(strategy, args, requests=sys.stdin, replies=sys.stdout) -> None:
    """For the throughput benchmark (helpers.tooling.speed): train the article's CNN with the loop
    one epoch (training only) each time a line arrives on `requests`, and answer
    ``epoch-seconds S``; stop at end of input. Batches come from a ``tf.data`` pipeline that
    reshuffles every epoch (the same seed on every worker, so they agree on the order)."""
    import itertools
    import math

    from helpers.notebook.quiet_tensorflow import tf
    from helpers.training import Trainer
    from helpers.training.distributed import build_cnn, distributed_train_step, shard_by_data

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
    where.add_argument("--workers", type=int, default=None,
                       help="start this many worker processes (MultiWorkerMirroredStrategy)")
    where.add_argument("--replicas", type=int, default=None,
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
    parser.add_argument("--dropout", type=float, default=None,
                        help="Dropout rate of the CNN (default: the article's; 0 to compare "
                             "with one device)")
    parser.add_argument("--l2", type=float, default=0.0,
                        help="L2 penalty on every kernel (0: none, as in the article)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads per process (0: TensorFlow's default)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds to wait for the workers (each time they are started) "
                             "before stopping them")
    parser.add_argument("--restarts", type=int, default=0,
                        help="with --workers: when a worker dies, start the group again from "
                             "the last epoch every worker saved, at most this many times")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the results (default: a new temporary folder)")
    parser.add_argument("--fail-worker", type=int, default=None,
                        help="make this worker fail at start (checks the launcher's failure path)")
    parser.add_argument("--fail", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-epochs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with usage_errors(parser):
        check_launcher_options(args)
    if args.out is None and not args.serve_epochs:  # a benchmark worker writes no files
        args.out = Path(tempfile.mkdtemp(prefix="tape-vs-fit-distributed-"))
    return args


def check_launcher_options(args: argparse.Namespace) -> None:
    """Every option of the command line, and the combinations that cannot train: a
    ParameterError naming the first one not allowed."""
    name = command_line_names()
    if args.worker_index is None and args.workers is None and args.replicas is None:
        refuse("--workers", None, "give --workers N (worker processes) or --replicas N (logical "
               "CPU devices in this process)")
    if args.workers is not None:
        check_integer("--workers", args.workers, 2)  # one worker is no cluster
    if args.replicas is not None:
        check_integer("--replicas", args.replicas, 1)
    if args.worker_index is not None:
        check_integer("--worker-index", args.worker_index, 0)
    if "matched" in args.trainers and args.workers:
        refuse("--trainers", args.trainers, "matched trains on one device; use it with "
               "--replicas")
    for option in ("epochs", "samples", "val_samples", "batch_size"):
        check_integer(name(option), getattr(args, option), 1)
    check_integer("--seed", args.seed, 0)
    check_integer("--threads", args.threads, 0)
    check_integer("--restarts", args.restarts, 0)
    if args.restarts and not args.workers:
        refuse("--restarts", args.restarts, "it applies to --workers (restarting worker "
               "processes); leave it out otherwise")
    if args.fail_worker is not None:
        if not args.workers:
            refuse("--fail-worker", args.fail_worker, "it applies to --workers")
        check_integer("--fail-worker", args.fail_worker, 0, args.workers - 1)
    if args.dropout is not None:
        check_number("--dropout", args.dropout, minimum=0, below=1)
    check_number("--l2", args.l2, minimum=0)
    check_number("--timeout", args.timeout, above=0)
    images = args.samples + args.val_samples
    if not NUM_CLASSES <= images <= MNIST_TRAIN_IMAGES:
        refuse("--samples", args.samples, f"--samples + --val-samples must be from {NUM_CLASSES} "
               f"(one image per class) to {MNIST_TRAIN_IMAGES} (MNIST's training images); now "
               f"{images}")
    replicas = args.workers or args.replicas
    if replicas:
        check_batches(args.batch_size, replicas, {"--samples": args.samples,
                                                  "--val-samples": args.val_samples})
    if args.out is not None:
        check_output_folder("--out", args.out)


def check_batches(batch_size: int, replicas: int, sizes: dict[str, int]) -> None:
    """Every batch must give each of the `replicas` at least one sample: a replica without one
    makes TensorFlow's CPU convolution fail (helpers.training.distributed, the partial last
    batch). So the global batch is at least `replicas`, and so is the last, partial batch of
    each of the `sizes` (option -> images), unless there is none."""
    if batch_size < replicas:
        refuse("--batch-size", batch_size, f"it must be >= the number of replicas ({replicas}): "
               "each replica needs at least one sample of every batch")
    for option, size in sizes.items():
        last = size % batch_size
        if 0 < last < replicas:
            refuse(option, size, f"its last batch of --batch-size {batch_size} would hold {last} "
                   f"image(s), fewer than the {replicas} replicas (each needs one): choose sizes "
                   f"whose remainder is 0 or at least {replicas}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker_index is not None:
        _run_worker(args)
        return 0
    if args.workers:
        try:
            results = launch_workers(args, log=lambda line: print(f"launcher: {line}",
                                                                  flush=True))
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
    from helpers.notebook.quiet_tensorflow import tf  # noqa: F401 (no start-up lines)
    from helpers.threads import use_threads
    from helpers.training.distributed import mirrored_strategy

    prepare_output_dir(args.out)
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
