"""Training throughput of fit() and of GradientTape loops, measured fairly.

Used by ``benchmarks/throughput.py`` and notebook 05 (speed); nothing here is copied into either.

What is measured: training only (no validation), in samples per second, per epoch. Every method
trains its own copy of the article's CNN (``create_cnn(seed)``: the same initial weights), and the
methods take turns epoch by epoch -- round-robin, with the order rotated every round -- so that
whatever else the machine does in the meantime slows all of them alike. The first ``warmup``
epochs of each method are run but not counted: they hold tracing, XLA compilation and the
allocator's first touches. The throughput of a method is the median over its measured epochs;
its ratio is that median over the median of ``fit_auto`` (``model.fit`` as the article calls it,
``jit_compile="auto"``) measured in the same run.

Methods (`BENCHMARK_METHODS`):

- ``fit_auto``, ``fit_graph``, ``fit_xla``: ``model.fit(x, y, shuffle=True)`` with
  ``jit_compile`` "auto" (the default), False and True. Keras resolves "auto" to False on a machine
  with no GPU/TPU (keras/src/trainers/trainer.py: ``Trainer._resolve_auto_jit_compile``:
  "Disable XLA on CPU-only machines"), so on a CPU ``fit_auto`` and ``fit_graph`` run the same
  code and their difference shows the noise of the measurement. Each epoch is timed from fit's
  ``on_epoch_begin`` to ``on_epoch_end`` callbacks, so the per-call setup of ``fit(epochs=1)``
  (building the data adapter), which a many-epoch fit pays once, is not counted.
- ``naive_eager``: the article's loop as published (`helpers.training.train_naive` with
  ``compiled=False``): batches in file order, ``model(x)``, per-sample loss vector, the partial
  batch dropped -- so it trains ``(N // batch_size) * batch_size`` samples an epoch.
- ``matched_eager``, ``matched_graph``, ``matched_xla``: the loop of
  `helpers.training.train_matched` -- a new permutation each epoch, each batch gathered inside the
  step from an index tensor -- run eagerly, under ``tf.function`` (as the notebooks use it) and
  under ``tf.function(jit_compile=True)``.
- ``matched_numpy``, ``matched_tfdata``: the same step under ``tf.function``, fed batches sliced
  from the NumPy arrays each step, or by a ``tf.data`` pipeline (``from_tensor_slices``,
  ``shuffle`` over all samples, ``batch``, ``prefetch``).
- ``fit_bf16``, ``matched_bf16``: ``fit_auto`` and ``matched_graph`` with the model built and
  trained under the ``mixed_bfloat16`` dtype policy (`dtype_policy`): bfloat16 computations,
  float32 variables, no loss scaling (compile adds a ``LossScaleOptimizer`` only under
  ``mixed_float16``). bfloat16 multiplies run on the AVX-512 BF16 units of CPUs that have them;
  the FLOP count and the float32 matmul peak are the same as for the float32 methods.
  `policy_cross_validation` measures what the policy does to the final validation accuracy.
- ``fit_spe``, ``matched_spe``: ``steps_per_execution`` set to the number of batches in an epoch
  -- fit's ``compile`` option (read from ``model.steps_per_execution``), and
  ``train_matched``'s option of the same name: one call of the compiled function trains the
  whole epoch in a graph loop, so Python and the function call are paid once an epoch rather
  than once a batch.
- ``workers1``, ``workers2_1thread``: `helpers.training.distributed`'s loop under a
  ``MultiWorkerMirroredStrategy``, on 1 worker process with TensorFlow's default threads, and on
  2 worker processes limited to one intra-op thread each -- data parallelism over the 2 cores,
  against one process that uses both cores inside every operation. The workers (127.0.0.1,
  free ports, in a private loopback-only network where one can be made:
  helpers.tooling.private_network) stay up across epochs and train one epoch of the global batch
  when asked; batches come from a reshuffling ``tf.data`` pipeline, as in ``matched_tfdata``.

The loops are the helpers' own: each tape-loop method holds a `helpers.training.Trainer` --
built by `helpers.training.tape_loop_trainer`, exactly as `train_naive` and `train_matched` build
theirs, or around the same `matched_train_step` for the NumPy and ``tf.data`` feeds -- and calls
its ``run_epoch`` once a round, so its step is built and traced once across all epochs.
tests/test_benchmark.py checks that they reach the same weights as `train_naive` and
`train_matched`. Outside ``Trainer.train`` an epoch drives no callbacks and makes no per-batch
logs, so what is timed is the training itself.

FLOPs: `layer_flops` counts the multiply-adds of the convolutions and dense layers from the
layer shapes (conv: 2*H_out*W_out*k*k*C_in*C_out, dense: 2*in*out; bias, activations, pooling and
dropout are left out). A training step runs each of them three times -- forward, gradient with
respect to the weights, gradient with respect to the layer's input -- except that the first
layer's input gradient is never computed (its input is the data), so `training_flops_per_sample`
is ``3 * forward - first layer``. Achieved GFLOP/s are compared with the speed of a large
float32 ``tf.matmul`` (`matmul_gflops`) timed after every epoch of the same run -- the median of
those is the "peak": what this machine's cores reach on the friendliest kernel there is, under the
same conditions.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from helpers.differences import DIFFERENCE_KEYS
from helpers.model import create_cnn
from helpers.training import EpochOrders, Trainer, matched_train_step, tape_loop_trainer
from helpers.training.fit import EpochTimer

REFERENCE = "fit_auto"

BENCHMARK_METHODS = {
    "fit_auto": 'model.fit, jit_compile="auto" (the default)',
    "fit_graph": "model.fit, jit_compile=False",
    "fit_xla": "model.fit, jit_compile=True (XLA)",
    "fit_spe": "model.fit, steps_per_execution = one epoch",
    "naive_eager": "article's naive tape loop, eager",
    "matched_eager": "matched tape loop, eager",
    "matched_graph": "matched tape loop, tf.function (as the notebooks run it)",
    "matched_numpy": "matched step in tf.function, batches sliced from NumPy",
    "matched_tfdata": "matched step in tf.function, batches from tf.data",
    "matched_xla": "matched tape loop, tf.function(jit_compile=True) (XLA)",
    "matched_spe": "matched tape loop, steps_per_execution = one epoch",
    "fit_bf16": 'model.fit, jit_compile="auto", mixed_bfloat16 policy',
    "matched_bf16": "matched tape loop, tf.function, mixed_bfloat16 policy",
    "workers1": "tape loop under MultiWorkerMirroredStrategy, 1 worker process (default threads)",
    "workers2_1thread": "tape loop, 2 worker processes (data parallel), 1 intra-op thread each",
}


# ----------------------------------------------------------------------------------------------
# FLOPs and the machine's matmul speed


def layer_flops(model: keras.Model) -> dict[str, int]:
    """Floating-point operations of one sample's forward pass through each Conv2D and Dense layer
    (a multiply-add counts as 2), by layer name, in model order; other layers are ignored (they
    are a small fraction here)."""
    flops = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            _, h_out, w_out, _ = layer.output.shape
            flops[layer.name] = 2 * h_out * w_out * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            flops[layer.name] = 2 * n_in * n_out
    return {name: int(value) for name, value in flops.items()}


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one sample's forward pass (`layer_flops` summed)."""
    return sum(layer_flops(model).values())


def training_flops_per_sample(model: keras.Model) -> int:
    """Forward + weight gradients + input gradients; the first layer has no input gradient."""
    per_layer = list(layer_flops(model).values())
    return 3 * sum(per_layer) - per_layer[0]


@functools.lru_cache(maxsize=2)
def _matmul_operands(size: int) -> tuple[tf.Tensor, tf.Tensor]:
    a = tf.random.stateless_uniform([size, size], seed=[1, 2])
    b = tf.random.stateless_uniform([size, size], seed=[3, 4])
    float(tf.matmul(a, b)[0, 0])  # an untimed first product
    return a, b


def matmul_gflops(size: int = 2048, runs: int = 1) -> list[float]:
    """GFLOP/s of `runs` float32 ``size x size`` matrix products (2*size**3 FLOPs each). Eager ops
    on the CPU return when done; reading one element of the result makes sure."""
    a, b = _matmul_operands(size)
    speeds = []
    for _ in range(runs):
        start = time.perf_counter()
        float(tf.matmul(a, b)[0, 0])
        speeds.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return speeds


# ----------------------------------------------------------------------------------------------
# One runner per method: a model of its own, trained one epoch per call


class _FitRunner:
    def __init__(self, x, y, batch_size, seed, jit_compile, steps_per_execution=1):
        self.model = create_cnn(seed)  # compiled as the article does: jit_compile="auto"
        if jit_compile != "auto":
            self.model.jit_compile = jit_compile  # read when fit builds its train function
        # Also read by fit, when it makes its train function and its epoch iterator.
        self.model.steps_per_execution = steps_per_execution
        self.x, self.y, self.batch_size = x, y, batch_size
        self.samples_per_epoch = len(x)
        self.timer = EpochTimer()

    def run_epoch(self) -> float:
        self.model.fit(self.x, self.y, batch_size=self.batch_size, epochs=1, shuffle=True,
                       verbose=0, callbacks=[self.timer])
        return self.timer.seconds[0]


class _LoopRunner:
    """A tape loop's `Trainer` on its own model, one epoch per ``run_epoch`` (training only)."""

    def __init__(self, model, trainer: Trainer, samples_per_epoch: int, batch_size: int):
        self.model, self.trainer = model, trainer
        self.samples_per_epoch, self.batch_size = samples_per_epoch, batch_size
        self.epochs_run = 0

    def run_epoch(self) -> float:
        start = time.perf_counter()
        self.trainer.run_epoch(self.epochs_run)  # ends reading the metrics: after the last step
        self.epochs_run += 1
        return time.perf_counter() - start


def _naive_runner(x, y, batch_size, seed) -> _LoopRunner:
    """`helpers.training.train_naive`'s loop, eager as published: file order, the partial batch
    dropped."""
    model = create_cnn(seed)
    trainer = tape_loop_trainer(model, (x, y), None, batch_size=batch_size, seed=seed, fixes=(),
                                compiled=False)
    return _LoopRunner(model, trainer, len(x) // batch_size * batch_size, batch_size)


def _matched_runner(x, y, batch_size, seed, feed="gather", compile="graph",
                    steps_per_call=1) -> _LoopRunner:
    """`helpers.training.train_matched`'s loop, fed in one of three ways:

    - ``"gather"``: as train_matched does (it is `tape_loop_trainer`'s) -- the step takes a batch
      of indices and gathers the images and labels inside it from tensors holding all samples;
    - ``"numpy"``: the batch is sliced from the NumPy arrays in Python and passed in;
    - ``"tfdata"``: the batches come from a ``tf.data`` pipeline.

    `compile` is None (eager), "graph" (``tf.function``) or "xla" (``tf.function(jit_compile=
    True)``). With ``steps_per_call`` > 1 (``"gather"`` feed only) each call trains that many
    batches, as ``train_matched(..., steps_per_execution=steps_per_call)`` does. Compiled steps
    get an ``input_signature`` whose batch dimension is None, so the partial last batch uses the
    same trace (tf.function docstring, "Input signatures": "This ensures only one
    ConcreteFunction is created"); under XLA the compiled program is still specialised to each
    concrete shape, so the partial batch costs one more XLA compilation during the warm-up
    epoch. The gather and NumPy feeds take epoch e in the order ``epoch_orders(N, epochs,
    seed)[e]``, as train_matched does.
    """
    if feed not in ("gather", "numpy", "tfdata"):
        raise ValueError(f"feed={feed!r}; use 'gather', 'numpy' or 'tfdata'")
    if compile not in (None, "graph", "xla"):
        raise ValueError(f"compile={compile!r}; use None, 'graph' or 'xla'")
    if steps_per_call != 1 and feed != "gather":
        raise ValueError("steps_per_call > 1 needs feed='gather'")
    model = create_cnn(seed)
    compiled = dict(compiled=compile is not None, jit_compile=compile == "xla")
    if feed == "gather":
        trainer = tape_loop_trainer(model, (x, y), None, batch_size=batch_size, seed=seed,
                                    fixes=DIFFERENCE_KEYS, steps_per_execution=steps_per_call,
                                    **compiled)
        return _LoopRunner(model, trainer, len(x), batch_size)
    step = matched_train_step(model, x, y)
    if feed == "numpy":
        orders = EpochOrders(len(x), seed)

        def batches(epoch):
            order = orders[epoch]
            for start in range(0, len(x), batch_size):
                indices = order[start:start + batch_size]
                yield x[indices], y[indices]
    else:
        dataset = (
            tf.data.Dataset.from_tensor_slices((tf.convert_to_tensor(x), tf.convert_to_tensor(y)))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )

        def batches(epoch):  # a new pass, reshuffled
            return dataset

    signature = [tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype)) for a in (x, y)]
    trainer = Trainer(model, step, batches, steps=math.ceil(len(x) / batch_size),
                      input_signature=signature, **compiled)
    return _LoopRunner(model, trainer, len(x), batch_size)


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Keras' global dtype policy set to `policy` inside the block, the previous one restored
    after it. Layers take the policy when they are built, so build (and train) under it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class _PolicyRunner:
    """Another method's runner, built and run under a dtype policy."""

    def __init__(self, policy: str, make: Callable):
        self.policy = policy
        with dtype_policy(policy):
            self.runner = make()
        self.model, self.samples_per_epoch = self.runner.model, self.runner.samples_per_epoch

    def run_epoch(self) -> float:
        with dtype_policy(self.policy):
            return self.runner.run_epoch()


class _WorkersRunner:
    """`helpers.training.distributed`'s loop on `workers` worker processes of a
    MultiWorkerMirroredStrategy
    on this machine (127.0.0.1, in a `helpers.tooling.private_network.LoopbackNetwork`), each
    limited to `threads` intra-op threads (0: TensorFlow's default, all cores). The workers stay up
    across epochs and train one epoch of the global batch `batch_size` each time they are asked
    (`helpers.tooling.launcher.serve_epochs`); an epoch takes as long as the slowest worker
    reports. They
    load MNIST themselves, so `x` must be ``load_mnist("train", subset=len(x), seed=seed)``
    (checked). Call `close` to stop them."""

    def __init__(self, x, y, batch_size, seed, workers, threads):
        from helpers.data import load_mnist
        from helpers.tooling.launcher import tf_config
        from helpers.tooling.private_network import LoopbackNetwork

        if not np.array_equal(load_mnist("train", subset=len(x), seed=seed)[0], x):
            raise ValueError("the worker methods need x = load_mnist('train', subset=len(x), "
                             "seed=seed), which their processes load themselves")
        self.model = create_cnn(seed)  # what the workers train (for the FLOP count)
        self.samples_per_epoch = len(x)
        self.network = LoopbackNetwork(workers)
        self.processes = []
        for index in range(workers):
            command = [sys.executable, "-m", "helpers.tooling.launcher",
                       "--worker-index", str(index),
                       "--serve-epochs", "--samples", str(len(x)), "--batch-size",
                       str(batch_size), "--seed", str(seed), "--threads", str(threads)]
            env = dict(os.environ, TF_CONFIG=tf_config(self.network.hosts, index),
                       TF_CPP_MIN_LOG_LEVEL="2")
            self.processes.append(subprocess.Popen(
                self.network.prefix + command, env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        weakref.finalize(self, _stop, self.processes, self.network)
        for process in self.processes:
            self._reply(process, "ready")

    @staticmethod
    def _reply(process, prefix: str) -> str:
        for line in process.stdout:
            if line.startswith(prefix):
                return line
        _stop([process])
        raise RuntimeError(f"benchmark worker (pid {process.pid}) ended with exit code "
                           f"{process.returncode} before answering {prefix!r}")

    def run_epoch(self) -> float:
        from helpers.tooling.launcher import EPOCH_REPLY

        for process in self.processes:
            process.stdin.write("\n")
            process.stdin.flush()
        return max(float(self._reply(process, EPOCH_REPLY).split()[1])
                   for process in self.processes)

    def close(self) -> None:
        _stop(self.processes, self.network)


def _stop(processes, network=None, timeout: float = 30) -> None:
    """Close the workers' input (they stop at its end); kill any still running after `timeout`;
    then close their `network`, if given."""
    for process in processes:
        if process.stdin and not process.stdin.closed:
            process.stdin.close()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if network is not None:
        network.close()


def make_runner(method: str, x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int = 0):
    """A fresh model for `method` and an object whose ``run_epoch()`` trains it for one epoch and
    returns the seconds that took; ``samples_per_epoch`` is how many samples an epoch trains."""
    steps_per_epoch = math.ceil(len(x) / batch_size)
    builders: dict[str, Callable] = {
        "fit_auto": lambda: _FitRunner(x, y, batch_size, seed, "auto"),
        "fit_graph": lambda: _FitRunner(x, y, batch_size, seed, False),
        "fit_xla": lambda: _FitRunner(x, y, batch_size, seed, True),
        "fit_spe": lambda: _FitRunner(x, y, batch_size, seed, "auto", steps_per_epoch),
        "naive_eager": lambda: _naive_runner(x, y, batch_size, seed),
        "matched_eager": lambda: _matched_runner(x, y, batch_size, seed, "gather", None),
        "matched_graph": lambda: _matched_runner(x, y, batch_size, seed, "gather", "graph"),
        "matched_numpy": lambda: _matched_runner(x, y, batch_size, seed, "numpy", "graph"),
        "matched_tfdata": lambda: _matched_runner(x, y, batch_size, seed, "tfdata", "graph"),
        "matched_xla": lambda: _matched_runner(x, y, batch_size, seed, "gather", "xla"),
        "matched_spe": lambda: _matched_runner(x, y, batch_size, seed, "gather", "graph",
                                               steps_per_epoch),
        "fit_bf16": lambda: _PolicyRunner(
            "mixed_bfloat16", lambda: _FitRunner(x, y, batch_size, seed, "auto")),
        "matched_bf16": lambda: _PolicyRunner(
            "mixed_bfloat16", lambda: _matched_runner(x, y, batch_size, seed, "gather", "graph")),
        "workers1": lambda: _WorkersRunner(x, y, batch_size, seed, workers=1, threads=0),
        "workers2_1thread": lambda: _WorkersRunner(x, y, batch_size, seed, workers=2,
                                                   threads=1),
    }
    if method not in builders:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(BENCHMARK_METHODS)}")
    return builders[method]()


# ----------------------------------------------------------------------------------------------
# The interleaved measurement


@dataclass
class Measurement:
    """Every timed epoch (`epochs`, warm-up included, a row each) and the matmul speeds."""

    epochs: pd.DataFrame
    peak_gflops: list[float]
    flops_per_sample: int
    jit_compile: dict[str, bool] = field(default_factory=dict)


def check_methods(methods: Iterable[str] | None) -> list[str]:
    """The methods to run, in order, with the reference `fit_auto` added first if missing."""
    methods = list(BENCHMARK_METHODS) if methods is None else list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in BENCHMARK_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(BENCHMARK_METHODS)}")
    return methods if REFERENCE in methods else [REFERENCE, *methods]


def measure(
    x: np.ndarray,
    y: np.ndarray,
    *,
    methods: Sequence[str] | None = None,
    batch_size: int = 64,
    epochs: int = 5,
    warmup: int = 1,
    repeats: int = 1,
    seed: int = 0,
    peak_size: int = 2048,
    peak_runs: int = 1,
    log: Callable[[str], None] | None = print,
) -> Measurement:
    """Train every method for ``warmup + epochs`` epochs, round-robin, `repeats` times (each
    repeat with new models); time each epoch. After every epoch, `peak_runs` float32 matmuls of
    ``peak_size`` are timed too; the peak is their median."""
    if epochs < 1 or warmup < 0 or repeats < 1:
        raise ValueError("need epochs >= 1, warmup >= 0 and repeats >= 1")
    methods = check_methods(methods)
    rows, peaks, jit = [], [], {}
    flops = None
    for repeat in range(repeats):
        runners = {m: make_runner(m, x, y, batch_size=batch_size, seed=seed) for m in methods}
        flops = training_flops_per_sample(runners[methods[0]].model)
        for method, runner in runners.items():
            if isinstance(runner, _FitRunner):
                jit[method] = bool(runner.model.jit_compile)
        for round_ in range(warmup + epochs):
            shift = round_ % len(methods)
            for method in methods[shift:] + methods[:shift]:  # rotate who goes first
                runner = runners[method]
                seconds = runner.run_epoch()
                rows.append({
                    "repeat": repeat, "round": round_, "method": method,
                    "warmup": round_ < warmup, "seconds": seconds,
                    "samples": runner.samples_per_epoch,
                    "samples_per_s": runner.samples_per_epoch / seconds,
                })
                # The yardstick takes turns too, so it meets the same machine as the methods.
                peaks.extend(matmul_gflops(peak_size, peak_runs))
            if log is not None:
                kind = "warm-up" if round_ < warmup else "measured"
                done = [r for r in rows if r["repeat"] == repeat and r["round"] == round_]
                log(f"repeat {repeat + 1}/{repeats} round {round_ + 1}/{warmup + epochs} "
                    f"({kind}): " + ", ".join(
                        f"{r['method']} {r['samples_per_s']:.0f}" for r in done
                    ) + " samples/s")
        for runner in runners.values():
            if isinstance(runner, _WorkersRunner):
                runner.close()
    return Measurement(pd.DataFrame(rows), peaks, flops, jit)


def summarize_throughput(measurement: Measurement) -> pd.DataFrame:
    """One row per method: median samples/s over the measured epochs, spread, ratio to fit_auto,
    achieved GFLOP/s and utilization of the measured matmul peak."""
    table = measurement.epochs
    measured = table[~table["warmup"]]
    peak = statistics.median(measurement.peak_gflops)
    rows = []
    for method, group in measured.groupby("method", sort=False):
        speeds = group["samples_per_s"]
        rows.append({
            "method": method,
            "description": BENCHMARK_METHODS[method],
            "samples_per_s": speeds.median(),
            "samples_per_s_q25": speeds.quantile(0.25),
            "samples_per_s_q75": speeds.quantile(0.75),
            "epochs_measured": len(speeds),
            "samples_per_epoch": int(group["samples"].iloc[0]),
            "warmup_seconds": float(table[(table["method"] == method) & table["warmup"]]
                                    ["seconds"].sum()),
        })
    summary = pd.DataFrame(rows)
    reference = summary.loc[summary["method"] == REFERENCE, "samples_per_s"].iloc[0]
    summary["ratio_to_fit_auto"] = summary["samples_per_s"] / reference
    summary["gflops"] = summary["samples_per_s"] * measurement.flops_per_sample / 1e9
    summary["peak_gflops"] = peak
    summary["utilization_pct"] = 100 * summary["gflops"] / peak
    summary["train_flops_per_sample"] = measurement.flops_per_sample
    summary["jit_compile"] = summary["method"].map(measurement.jit_compile)
    order = {name: i for i, name in enumerate(BENCHMARK_METHODS)}
    return summary.sort_values("method", key=lambda col: col.map(order)).reset_index(drop=True)


def format_table(summary: pd.DataFrame) -> str:
    """The summary as a fixed-width text table."""
    lines = [f"{'method':<15} {'samples/s':>10} {'IQR':>13} {'x fit_auto':>10} "
             f"{'GFLOP/s':>8} {'% peak':>7}  description"]
    for row in summary.itertuples():
        spread = f"{row.samples_per_s_q25:.0f}-{row.samples_per_s_q75:.0f}"
        lines.append(
            f"{row.method:<15} {row.samples_per_s:>10.0f} {spread:>13} "
            f"{row.ratio_to_fit_auto:>10.2f} {row.gflops:>8.1f} {row.utilization_pct:>6.1f}%"
            f"  {row.description}"
        )
    peak = summary["peak_gflops"].iloc[0]
    flops = summary["train_flops_per_sample"].iloc[0]
    lines.append(f"peak: median float32 matmul speed {peak:.1f} GFLOP/s on this machine; "
                 f"training FLOPs per sample: {flops / 1e6:.2f} M (analytic: forward + "
                 "gradients)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# What a dtype policy does to accuracy


def policy_cross_validation(x: np.ndarray, y: np.ndarray, *, policies: Sequence[str],
                            methods: Sequence[str] = ("fit", "matched"), folds: int,
                            epochs: int, batch_size: int, seed: int = 0,
                            verbose: int = 0) -> pd.DataFrame:
    """`helpers.experiments.cv.cross_validate` of each of `methods` (names from
    helpers.training.METHODS)
    under each dtype policy: the same folds and initial weights for all, every model built and
    trained inside `dtype_policy`. The tidy table's ``method`` is ``<method>@<policy>``."""
    from helpers.experiments.cv import cross_validate
    from helpers.training import METHODS

    tables = []
    for policy in policies:
        def build(seed, policy=policy):
            with dtype_policy(policy):
                return create_cnn(seed)

        def under_policy(train, policy=policy):
            def train_under_policy(*args, **kwargs):
                with dtype_policy(policy):
                    return train(*args, **kwargs)
            return train_under_policy

        tables.append(cross_validate(
            {f"{name}@{policy}": under_policy(METHODS[name]) for name in methods},
            x, y, folds=folds, epochs=epochs, batch_size=batch_size, seed=seed,
            model_fn=build, verbose=verbose))
    return pd.concat(tables, ignore_index=True)
