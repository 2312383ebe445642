"""helpers.training.distributed: the tape loop under tf.distribute equals fit, one device and its
workers.

Every run that needs 2 logical CPU devices or a MultiWorkerMirroredStrategy worker happens in a
fresh process (this one has TensorFlow's devices initialized already): `python -m
helpers.training.distributed`, with tiny data (a few hundred images, 1-2 epochs) and a timeout on
every
wait. Workers talk over 127.0.0.1 on ports chosen free at run time, inside a private network
namespace with only a loopback interface (helpers.tooling.private_network), which makes TensorFlow's
0.0.0.0 listeners unreachable from this machine's network (checked below, as root); the launcher
kills every worker that is still running, and the namespace's holder, when it returns or fails.

Tolerances: with 2 replicas every all-reduce adds two numbers, and a + b == b + a exactly in
floating point, so the reduction order cannot change a bit; fit, the loop under
MirroredStrategy and the loop on 2 MWMS workers are therefore compared for exact equality
(measured: max |diff| = 0 in History and weights). 2 replicas against 1 device is different
arithmetic -- two half-batch means averaged instead of one batch mean, and convolution
gradients summed over 32 instead of 64 images -- so it is compared to a float32 tolerance.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.notebook.quiet_tensorflow import is_start_up_line
from helpers.tooling import private_network
from helpers.tooling.launcher import (
    WorkerError,
    checkpoint_dir,
    how_it_ended,
    last_meaningful_lines,
    launch_workers,
    load_result,
    main,
    max_history_difference,
    max_weight_difference,
    parse_args,
    roll_back_to_common_epoch,
    saved_epochs,
    tf_config,
)
from helpers.tooling.private_network import LoopbackNetwork, free_ports

# The distributed loop reproduces Keras 3.15's fit under a strategy and is refused with older
# Keras (helpers.compat.KERAS_GATES["strategy"]), so the oldest-versions run deselects this
# file.
pytestmark = pytest.mark.pinned

# 609 = 9 full batches of 64 and a partial one of 33, which 2 replicas split 17 + 16; the 130
# validation images end in a batch of 2, split 1 + 1. (A batch of 1 would leave a replica empty,
# which makes TensorFlow's CPU convolution fail under fit and the loop alike.)
ODD = ["--samples", "609", "--val-samples", "130", "--epochs", "2"]
TIMEOUT = 240  # seconds for any one run (each takes ~15 s on an idle 2-core machine)
REPO = Path(__file__).resolve().parent.parent


def run_python(*args: str) -> subprocess.CompletedProcess:
    """`python ARGS` in a fresh process (subprocess.run kills it if the timeout passes)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def processes_mentioning(text: str) -> list[int]:
    """Ids of the running processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:  # the process ended meanwhile
                pass
    return found


# Every process this pytest run starts inherits this mark, so that a namespace holder of another
# run on the machine (e.g. appendix A3 executing in the notebooks' pytest alongside) is not taken
# for one this run left behind.
RUN_MARK = f"TAPE_VS_FIT_TEST_RUN={os.getpid()}"
os.environ["TAPE_VS_FIT_TEST_RUN"] = str(os.getpid())


def started_by_this_run(pid: int) -> bool:
    try:
        return RUN_MARK.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # ended meanwhile
        return False


def left_behind(tmp_path: Path) -> list[int]:
    """Workers of the run writing to `tmp_path`, and this run's namespace holders, still
    running."""
    return (processes_mentioning(str(tmp_path))
            + [pid for pid in processes_mentioning("helpers.tooling.private_network")
               if started_by_this_run(pid)])


LISTEN = "0A"  # the state column of /proc/net/tcp (include/net/tcp_states.h: TCP_LISTEN = 10)


def tcp_listeners(net: Path) -> set[tuple[str, int]]:
    """(local address in hex, port) of every listening TCP socket in the network namespace whose
    /proc/.../net folder is `net` (tcp: IPv4, tcp6: IPv6)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in (net / table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                address, port = fields[1].split(":")
                found.add((address, int(port, 16)))
    return found


class ListenerWatch(threading.Thread):
    """While running, collect the TCP listeners of this process's network namespace (the
    host's) and of every process whose command line mentions `marker` (the workers)."""

    def __init__(self, marker: str):
        super().__init__(daemon=True)
        self.marker, self.done = marker, threading.Event()
        self.host_before = tcp_listeners(Path("/proc/self/net"))
        self.host, self.workers = set(), set()

    def run(self):
        while not self.done.is_set():
            self.host |= tcp_listeners(Path("/proc/self/net"))
            for pid in processes_mentioning(self.marker):
                try:
                    self.workers |= tcp_listeners(Path(f"/proc/{pid}/net"))
                except OSError:  # the process ended meanwhile
                    pass
            time.sleep(0.1)


# Every in-process run under a 2-replica MirroredStrategy, in one fresh process (starting one
# with TensorFlow costs seconds of CPU), the launcher's uninterrupted run first: fit and the loop
# at the ODD sizes; the same with an L2 penalty and no Dropout, next to the matched loop on one
# device; and fit and the loop on a model compiled with a metric the article's compile call does
# not have, at the ODD sizes, so that the partial batches split unevenly.
REPLICA_RUNS = """
import sys
from pathlib import Path

import helpers.notebook.quiet_tensorflow  # before Keras: no TensorFlow start-up lines
import keras

from helpers.model import create_cnn
from helpers.tooling.launcher import load_split, main, save_result
from helpers.training import epoch_orders, train_fit
from helpers.training.distributed import mirrored_strategy, train_distributed

out = Path(sys.argv[1])
assert main(["--replicas", "2", "--trainers", "fit", "loop", *{odd}, "--out",
             str(out / "mirrored")]) == 0
assert main(["--replicas", "2", "--dropout", "0", "--l2", "0.01", "--trainers", "fit", "loop",
             "matched", "--samples", "640", "--val-samples", "160", "--epochs", "2",
             "--out", str(out / "regularization")]) == 0
strategy = mirrored_strategy(2)
train, val = load_split(609, 130, seed=0)
runs = dict(epochs=2, batch_size=64, seed=0, batch_orders=epoch_orders(609, 2, seed=0))
for name in ("fit", "loop"):
    with strategy.scope():  # the same initial weights for both (create_cnn seeds them)
        model = create_cnn(0, compile=False)
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=[
            "accuracy", keras.metrics.TopKCategoricalAccuracy(k=2, name="top_2_accuracy")])
    history = (train_fit(model, train, val, **runs) if name == "fit"
               else train_distributed(model, strategy, train, val, **runs))
    save_result({{"history": history, "weights": model.get_weights()}}, out / "metric" / name)
"""


@pytest.fixture(scope="module")
def replica_runs(tmp_path_factory):
    """The folder of REPLICA_RUNS's results (mirrored/, regularization/, metric/), and what the
    process printed."""
    out = tmp_path_factory.mktemp("replicas")
    done = run_python("-c", REPLICA_RUNS.format(odd=ODD), str(out))
    return {"out": out, "output": done.stdout + done.stderr}


@pytest.fixture(scope="module")
def mirrored(replica_runs):
    """fit and the loop, each from the same initial weights and batches, under one 2-replica
    MirroredStrategy on this machine's CPU split in two (and what the run printed)."""
    out = replica_runs["out"] / "mirrored"
    return {**{name: load_result(out / name) for name in ("fit", "loop")},
            "output": replica_runs["output"]}


def test_loop_equals_fit_under_mirrored_strategy(mirrored):
    fit, loop = mirrored["fit"], mirrored["loop"]
    assert fit["replicas"] == loop["replicas"] == 2
    assert max_history_difference(fit["history"], loop["history"]) == 0
    assert max_weight_difference(fit["weights"], loop["weights"]) == 0


def test_two_replicas_equal_one_device_and_fit_with_regularization(replica_runs):
    """Global batch 64 on 2 replicas against batch 64 on one device (train_matched), with Dropout
    off (each replica draws its own masks, which no single-device run reproduces) and 640 images,
    so that every batch splits 32 + 32 and the mean of the two half-batch means is the batch
    mean. An L2 penalty on every kernel makes model.losses non-empty, which the loop must scale
    by 1/replicas as fit does: there fit and the loop stay exactly equal.

    Against one device the weights differ by rounding, amplified where Adam divides a
    near-zero gradient by its near-zero root mean square: measured 1.3e-7 with TensorFlow's 2
    intra-op threads on a 2-core machine and 1.4e-5 with 1 thread (another summation order of
    the convolution gradients; TF_NUM_INTRAOP_THREADS=1, as in CI), hence 1e-4; thousands of
    times below the 0.02-0.04 differences in validation loss the notebooks discuss."""
    out = replica_runs["out"] / "regularization"
    fit, replicas, single = (load_result(out / name) for name in ("fit", "loop", "matched"))
    assert (replicas["replicas"], single["replicas"]) == (2, 1)
    assert max_history_difference(fit["history"], replicas["history"]) == 0
    assert max_weight_difference(fit["weights"], replicas["weights"]) == 0
    assert max_history_difference(replicas["history"], single["history"]) < 1e-5
    assert max_weight_difference(replicas["weights"], single["weights"]) < 1e-4
    # Not trivially equal: the arithmetic differs, so some weight moved by a rounding error.
    assert max_weight_difference(replicas["weights"], single["weights"]) > 0


def test_loop_equals_fit_with_any_compiled_metric(replica_runs):
    """The loop's History is the compiled metrics' (the loss tracker and ``compute_metrics``, as
    in fit's step), so a metric other than accuracy -- top-2 accuracy here -- is in it, in
    training and validation, equal to fit's to the bit, and so are the weights."""
    fit, loop = (load_result(replica_runs["out"] / "metric" / name) for name in ("fit", "loop"))
    metric_keys = set(fit["history"]) - {"seconds"}
    assert metric_keys == {"loss", "accuracy", "top_2_accuracy", "val_loss", "val_accuracy",
                           "val_top_2_accuracy"}
    assert set(loop["history"]) - {"seconds"} == metric_keys
    for key in metric_keys:
        assert loop["history"][key] == fit["history"][key], key
    assert max_weight_difference(fit["weights"], loop["weights"]) == 0


def worker_args(out: Path, *extra: str):
    return parse_args(["--workers", "2", *ODD, "--timeout", str(TIMEOUT), "--out", str(out),
                       *extra])


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """One run of the loop on 2 MWMS workers with ``--restarts 1``, worker 1 killed with
    SIGKILL once both have saved epoch 1 of 2 (so the run is also the restart test's), with the
    TCP listeners seen while it ran and the launcher's lines."""
    out = tmp_path_factory.mktemp("workers")
    lines, killed = [], []
    watch = ListenerWatch(str(out))
    killer = threading.Thread(target=kill_after_first_epoch, daemon=True,
                              args=(out, 1, killed, TIMEOUT))
    watch.start()
    killer.start()
    try:
        results = launch_workers(worker_args(out, "--restarts", "1"), log=lines.append)
    finally:
        watch.done.set()
        watch.join()
        killer.join()
    return {"results": results, "lines": lines, "killed": killed, "watch": watch,
            "left_behind": left_behind(out), "out": out}


def test_two_workers_end_equal_and_match_mirrored_strategy(mirrored, two_workers):
    """The two workers (killed and restarted halfway, which must not show) end with the same
    weights, and with the History and weights of the 2-replica MirroredStrategy run."""
    first, second = (result["loop"] for result in two_workers["results"])
    assert first["replicas"] == second["replicas"] == 2
    assert max_weight_difference(first["weights"], second["weights"]) == 0
    assert max_history_difference(first["history"], mirrored["loop"]["history"]) == 0
    assert max_weight_difference(first["weights"], mirrored["loop"]["weights"]) == 0
    assert not two_workers["left_behind"]


@pytest.mark.skipif(os.geteuid() != 0, reason="a private network namespace needs root")
def test_workers_listen_only_inside_their_private_network(two_workers):
    """TensorFlow's servers bind 0.0.0.0 (grpc_server_lib.cc). While the workers ran, their
    ports were listening in the workers' own network namespace (read from /proc/PID/net/tcp*,
    so the check below can see a listener) and never in this machine's (/proc/self/net/tcp*)."""
    started = two_workers["lines"][0]
    assert "(a private loopback-only network)" in started, started
    ports = {int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", started)}
    watch = two_workers["watch"]
    assert len(ports) == 2
    assert ports <= {port for _, port in watch.workers}, (ports, watch.workers)
    appeared_on_host = {port for _, port in watch.host - watch.host_before}
    assert not ports & appeared_on_host


@pytest.mark.skipif(os.geteuid() != 0, reason="a private network namespace needs root")
def test_a_running_holder_is_seen_as_this_runs_and_gone_after_close(tmp_path):
    """What `left_behind` relies on: this run's namespace holder carries its mark while it runs,
    and none of this run's is left once the network is closed."""
    with LoopbackNetwork(1) as network:
        assert network.private
        assert network.holder.pid in left_behind(tmp_path)
    assert not left_behind(tmp_path)


def test_without_a_namespace_the_network_warns(monkeypatch):
    """The fallback where no namespace can be made (here: as if unshare were not installed)."""
    monkeypatch.setattr(private_network.shutil, "which", lambda tool: None)
    warnings = []
    with LoopbackNetwork(2, warn=warnings.append) as network:
        assert (network.private, network.prefix, network.holder) == (False, [], None)
        assert len(set(network.hosts)) == 2 and all(
            host.startswith("127.0.0.1:") for host in network.hosts)
    assert len(warnings) == 1 and "no unshare command" in warnings[0]
    assert "ports are reachable from other interfaces" in warnings[0]


def test_fit_still_fails_under_multi_worker_mirrored_strategy(tmp_path):
    """keras-team/keras#20585. This asserts the CURRENT behaviour: fit cannot train under
    MultiWorkerMirroredStrategy with Keras 3.15.1."""
    with pytest.raises(WorkerError) as failure:
        launch_workers(worker_args(tmp_path, "--trainers", "fit"), log=lambda line: None)
    assert failure.value.worker in (0, 1)
    assert "PerReplica" in str(failure.value) and "unsupported type" in str(failure.value), (
        "model.fit under MultiWorkerMirroredStrategy no longer fails the way keras-team/keras"
        f"#20585 describes (got: {failure.value}). If fit now trains on several workers, "
        "appendix A3's claim that only a tape loop can is out of date: revisit it, and turn "
        "this test into one that compares fit with the loop under MWMS."
    )
    assert not left_behind(tmp_path)


def test_launcher_names_the_failed_worker_and_stops_the_others(tmp_path, capsys):
    code = main(["--workers", "2", "--fail-worker", "1", "--timeout", str(TIMEOUT),
                 "--out", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 1
    assert ("worker 1 failed (exit code 1): RuntimeError: this worker was told to fail"
            in error), error
    # Worker 0 was waiting for worker 1 in the cluster; the launcher must have killed it.
    assert not left_behind(tmp_path)


def start_up_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if is_start_up_line(line)]


def test_the_launcher_and_its_workers_print_no_tensorflow_start_up_lines(mirrored, two_workers):
    """What the in-process run printed (stdout and stderr, captured) and what each worker wrote
    to its log hold none of TensorFlow's C++ start-up lines: both import TensorFlow through
    helpers.notebook.quiet_tensorflow. The workers' logs are not empty: each says which epochs
    it finished."""
    assert "loop: 2 replica(s)" in mirrored["output"]
    assert not start_up_lines(mirrored["output"])
    for index in range(2):
        log = (two_workers["out"] / f"worker_{index}.log").read_text()
        assert "loop: epoch 2 finished" in log, log
        assert not start_up_lines(log), log


BANNER = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795949133.072756   24401 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1795949133.073144   24401 cudart_stub.cc:31] Could not find cuda drivers on your machine
"""


def test_a_failure_message_quotes_the_log_without_tensorflow_banner_lines(tmp_path):
    """The issue's case: a worker killed after its log's last line, TensorFlow's start-up lines
    around it. The message says how it ended and quotes the log's own lines (of the last start,
    after a restart), or the exception line of a traceback."""
    log = tmp_path / "worker_1.log"
    log.write_text(f"{BANNER}loop: epoch 1 finished, loss 2.1\n--- restart 1 ---\n{BANNER}"
                   f"loop: epoch 2 finished, loss 1.9\n{BANNER}")
    with log.open() as handle:
        assert last_meaningful_lines(handle) == "loop: epoch 2 finished, loss 1.9"
    log.write_text(f"{BANNER}Traceback (most recent call last):\n  File ...\n"
                   "RuntimeError: this worker was told to fail\n")
    with log.open() as handle:
        assert last_meaningful_lines(handle) == "RuntimeError: this worker was told to fail"
    log.write_text(BANNER)
    with log.open() as handle:
        assert last_meaningful_lines(handle) == "(no output)"
    assert how_it_ended(-9) == "killed by signal 9 (SIGKILL)"
    assert how_it_ended(1) == "exit code 1"


def test_roll_back_keeps_only_the_epochs_every_worker_saved(tmp_path):
    """Worker 0 saved epochs 1 and 2 of the loop, worker 1 only epoch 1: worker 0 is rolled back
    to epoch 1 (its epoch-2 files removed). Had worker 1 saved none, both start from 0."""
    import tensorflow as tf

    def save(worker, epochs):
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(0.0)),
                                             str(checkpoint_dir(tmp_path, worker, "loop")), 2)
        for epoch in epochs:
            manager.save(checkpoint_number=epoch)

    args = worker_args(tmp_path)  # while the folder is new
    save(0, [1, 2])
    save(1, [1])
    assert roll_back_to_common_epoch(args) == {"loop": 1}
    first = checkpoint_dir(tmp_path, 0, "loop")
    assert saved_epochs(first) == [1] and not list(first.glob("ckpt-2.*"))
    assert saved_epochs(checkpoint_dir(tmp_path, 1, "loop")) == [1]
    for file in checkpoint_dir(tmp_path, 1, "loop").iterdir():
        file.unlink()
    assert roll_back_to_common_epoch(args) == {"loop": 0}
    assert saved_epochs(first) == [] and not list(first.glob("ckpt-*"))


def saved_epoch_files(directory: Path) -> str:
    """The ``checkpoint`` state file's text ("" before the first save): CheckpointManager
    rewrites it, atomically, after a checkpoint's files are complete."""
    try:
        return (directory / "checkpoint").read_text()
    except FileNotFoundError:
        return ""


def worker_process(out: Path, index: int) -> int | None:
    """The id of the worker process `index` of the run writing to `out`, if it runs."""
    mark = f"--worker-index\0{index}\0"
    found = [pid for pid in processes_mentioning(str(out))
             if mark in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    return found[0] if found else None


def kill_after_first_epoch(out: Path, index: int, killed: list, timeout: float) -> None:
    """SIGKILL worker `index` as soon as both workers have saved epoch 1 of the loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all('"ckpt-1"' in saved_epoch_files(checkpoint_dir(out, worker, "loop"))
               for worker in range(2)):
            pid = worker_process(out, index)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return
        time.sleep(0.01)


def test_a_killed_worker_is_restarted_and_the_run_ends_as_an_uninterrupted_one(two_workers):
    """Worker 1 was killed with SIGKILL once both workers had saved epoch 1 of 2, in the middle
    of the run (the `two_workers` run). With --restarts 1 the launcher stops worker 0, says so
    in one line, and starts both again from epoch 1; the final History and weights of both
    workers equal the uninterrupted 2-replica MirroredStrategy run's bit for bit (checked in
    test_two_workers_end_equal_and_match_mirrored_strategy), and no process is left behind."""
    lines = two_workers["lines"]
    assert two_workers["killed"], "worker 1 was not running after epoch 1: nothing was killed"
    restarts = [line for line in lines if "restart" in line]
    assert restarts == [
        "worker 1 failed (killed by signal 9 (SIGKILL)): loop: epoch 1 finished, loss "
        + restarts[0].split("loop: epoch 1 finished, loss ")[1].split(";")[0]
        + "; restart 1 of 1: every worker resumes loop from epoch 1 (the last epoch all of "
        "them saved)"], lines
    for index in range(2):
        log = (two_workers["out"] / f"worker_{index}.log").read_text()
        assert "--- restart 1 ---" in log, log
    assert not two_workers["left_behind"]


def test_launcher_stops_workers_that_do_not_finish_in_time(tmp_path):
    args = worker_args(tmp_path)
    args.timeout = 1  # far less than starting TensorFlow takes
    with pytest.raises(WorkerError, match="did not finish within 1 s"):
        launch_workers(args, log=lambda line: None)
    assert not left_behind(tmp_path)


def test_free_ports_and_tf_config():
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(1024 <= port < 65536 for port in ports)
    config = tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1)
    assert config == ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
                      '"task": {"type": "worker", "index": 1}}')


def test_the_loop_refuses_what_it_cannot_reproduce():
    """A model from outside the strategy's scope, compiled for XLA, or with its own train_step is
    an error naming why."""
    import keras
    import tensorflow as tf

    from helpers.model import create_cnn
    from helpers.training.distributed import build_cnn, distributed_train_step

    strategy = tf.distribute.get_strategy()
    outside = tf.distribute.OneDeviceStrategy("/cpu:0")
    batch = np.zeros((1, 28, 28, 1)), np.zeros((1, 10))
    with pytest.raises(ValueError, match="not built under this strategy's scope"):
        distributed_train_step(build_cnn(outside, 0), strategy, *batch)
    model = create_cnn(0, compile=False)
    model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=True)
    with pytest.raises(ValueError, match="jit_compile=True"):
        distributed_train_step(model, strategy, *batch)

    class OwnStep(keras.Sequential):
        def train_step(self, data):
            return super().train_step(data)

    custom = OwnStep(create_cnn(0, compile=False).layers)
    custom.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=False)
    with pytest.raises(NotImplementedError, match=r"custom train_step \(OwnStep.train_step\)"):
        distributed_train_step(custom, strategy, *batch)
