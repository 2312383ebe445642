"""helpers.distributed: the tape loop under tf.distribute equals fit, one device and its workers.

Every run that needs 2 logical CPU devices or a MultiWorkerMirroredStrategy worker happens in a
fresh process (this one has TensorFlow's devices initialized already): `python -m
helpers.distributed`, with tiny data (a few hundred images, 1-2 epochs) and a timeout on every
wait. Workers talk over 127.0.0.1 on ports chosen free at run time, and the launcher kills every
worker that is still running when it returns or fails (checked below).

Tolerances: with 2 replicas every all-reduce adds two numbers, and a + b == b + a exactly in
floating point, so the reduction order cannot change a bit; fit, the loop under
MirroredStrategy and the loop on 2 MWMS workers are therefore compared for exact equality
(measured: max |diff| = 0 in History and weights). 2 replicas against 1 device is different
arithmetic -- two half-batch means averaged instead of one batch mean, and convolution
gradients summed over 32 instead of 64 images -- so it is compared to a float32 tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.distributed import (
    WorkerError,
    free_ports,
    launch_workers,
    load_result,
    main,
    max_history_difference,
    max_weight_difference,
    parse_args,
    tf_config,
)

# 609 = 9 full batches of 64 and a partial one of 33, which 2 replicas split 17 + 16; the 130
# validation images end in a batch of 2, split 1 + 1. (A batch of 1 would leave a replica empty,
# which makes TensorFlow's CPU convolution fail under fit and the loop alike.)
ODD = ["--samples", "609", "--val-samples", "130", "--epochs", "2"]
TIMEOUT = 240  # seconds for any one run (each takes ~15 s on an idle 2-core machine)
REPO = Path(__file__).resolve().parent.parent


def run_module(*args: str) -> subprocess.CompletedProcess:
    """`python -m helpers.distributed ARGS` in a fresh process (subprocess.run kills it if the
    timeout passes)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-m", "helpers.distributed", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
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


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """fit and the loop, each from the same initial weights and batches, under one 2-replica
    MirroredStrategy on this machine's CPU split in two."""
    out = tmp_path_factory.mktemp("mirrored")
    run_module("--replicas", "2", "--trainers", "fit", "loop", *ODD, "--out", str(out))
    return {name: load_result(out / name) for name in ("fit", "loop")}


def test_loop_equals_fit_under_mirrored_strategy(mirrored):
    fit, loop = mirrored["fit"], mirrored["loop"]
    assert fit["replicas"] == loop["replicas"] == 2
    assert max_history_difference(fit["history"], loop["history"]) == 0
    assert max_weight_difference(fit["weights"], loop["weights"]) == 0


def test_two_replicas_equal_one_device_and_fit_with_regularization(tmp_path):
    """Global batch 64 on 2 replicas against batch 64 on one device (train_matched), with Dropout
    off (each replica draws its own masks, which no single-device run reproduces) and 640 images,
    so that every batch splits 32 + 32 and the mean of the two half-batch means is the batch
    mean. An L2 penalty on every kernel makes model.losses non-empty, which the loop must scale
    by 1/replicas as fit does: there fit and the loop stay exactly equal."""
    run_module("--replicas", "2", "--dropout", "0", "--l2", "0.01", "--trainers", "fit", "loop",
               "matched", "--samples", "640", "--val-samples", "160", "--epochs", "2",
               "--out", str(tmp_path))
    fit, replicas, single = (load_result(tmp_path / name) for name in ("fit", "loop", "matched"))
    assert (replicas["replicas"], single["replicas"]) == (2, 1)
    assert max_history_difference(fit["history"], replicas["history"]) == 0
    assert max_weight_difference(fit["weights"], replicas["weights"]) == 0
    assert max_history_difference(replicas["history"], single["history"]) < 1e-5
    assert max_weight_difference(replicas["weights"], single["weights"]) < 1e-5
    # Not trivially equal: the arithmetic differs, so some weight moved by a rounding error.
    assert max_weight_difference(replicas["weights"], single["weights"]) > 0


def worker_args(out: Path, *extra: str):
    return parse_args(["--workers", "2", *ODD, "--timeout", str(TIMEOUT), "--out", str(out),
                       *extra])


def test_two_workers_end_equal_and_match_mirrored_strategy(mirrored, tmp_path):
    results = launch_workers(worker_args(tmp_path), log=lambda line: None)
    first, second = (result["loop"] for result in results)
    assert first["replicas"] == second["replicas"] == 2
    assert max_weight_difference(first["weights"], second["weights"]) == 0
    assert max_history_difference(first["history"], mirrored["loop"]["history"]) == 0
    assert max_weight_difference(first["weights"], mirrored["loop"]["weights"]) == 0
    assert not processes_mentioning(str(tmp_path))


def test_fit_still_fails_under_multi_worker_mirrored_strategy(tmp_path):
    """keras-team/keras#20585. This asserts the CURRENT behaviour: fit cannot train under
    MultiWorkerMirroredStrategy with Keras 3.15.1."""
    with pytest.raises(WorkerError) as failure:
        launch_workers(worker_args(tmp_path, "--trainers", "fit"), log=lambda line: None)
    assert failure.value.worker in (0, 1)
    assert "PerReplica" in str(failure.value) and "unsupported type" in str(failure.value), (
        "model.fit under MultiWorkerMirroredStrategy no longer fails the way keras-team/keras"
        f"#20585 describes (got: {failure.value}). If fit now trains on several workers, "
        "notebook 08's claim that only a tape loop can is out of date: revisit it, and turn "
        "this test into one that compares fit with the loop under MWMS."
    )
    assert not processes_mentioning(str(tmp_path))


def test_launcher_names_the_failed_worker_and_stops_the_others(tmp_path, capsys):
    code = main(["--workers", "2", "--fail-worker", "1", "--timeout", str(TIMEOUT),
                 "--out", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 1
    assert "worker 1 failed" in error and "RuntimeError: this worker was told to fail" in error
    # Worker 0 was waiting for worker 1 in the cluster; the launcher must have killed it.
    assert not processes_mentioning(str(tmp_path))


def test_launcher_stops_workers_that_do_not_finish_in_time(tmp_path):
    args = worker_args(tmp_path)
    args.timeout = 1  # far less than starting TensorFlow takes
    with pytest.raises(WorkerError, match="did not finish within 1 s"):
        launch_workers(args, log=lambda line: None)
    assert not processes_mentioning(str(tmp_path))


def test_free_ports_and_tf_config():
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(1024 <= port < 65536 for port in ports)
    config = tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1)
    assert config == ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
                      '"task": {"type": "worker", "index": 1}}')


def test_the_loop_refuses_what_it_cannot_reproduce():
    """A model from outside the strategy's scope, or compiled for XLA, is an error naming why."""
    import tensorflow as tf

    from helpers.distributed import build_cnn, distributed_train_step
    from helpers.model import create_cnn

    strategy = tf.distribute.get_strategy()
    outside = tf.distribute.OneDeviceStrategy("/cpu:0")
    with pytest.raises(ValueError, match="not built under this strategy's scope"):
        distributed_train_step(build_cnn(outside, 0), strategy, np.zeros((1, 10)))
    model = create_cnn(0, compile=False)
    model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=True)
    with pytest.raises(ValueError, match="jit_compile=True"):
        distributed_train_step(model, strategy, np.zeros((1, 10)))
