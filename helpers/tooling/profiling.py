"""Where a training epoch's time goes, op by op, read from TensorFlow's own profiler.

`profile_epoch` runs one epoch of a `helpers.tooling.speed` runner under
``tf.profiler.experimental`` (the trace TensorBoard's profile plugin shows), reads the trace file
back with the protobuf classes TensorFlow ships (`helpers.compat.read_xspace`; no extra
package), and splits the epoch's wall time into:

- time during which at least one TensorFlow op kernel runs, attributed to the ops that run --
  when two ops run at once (the executor starts independent ops on its inter-op threads), each
  gets half of that stretch, so the attributed times add up to the busy time exactly;
- *idle* time, when no kernel runs at all: Python, the call into the compiled function, and the
  executor handing work from one op to the next. This is the overhead a training loop can remove
  (the kernels themselves are the same in fit and in a tape loop).

Ops are grouped into categories (`CATEGORIES`); the convolution and dense categories get the
FLOPs `helpers.tooling.speed.layer_flops` counts, so the speed of those kernels *together* can be
compared with the machine's matmul peak (`utilization_bounds`). Not one by one: a convolution's
weight gradient and its input gradient run at the same time, each on both cores, and how the cores
were shared between them is not in the trace, so a single category's GFLOP/s would be a guess. The
profiler adds some overhead of its own, so the profiled epoch is a bit slower than an unprofiled
one; shares of wall time are what this is for, not absolute speed.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from helpers.compat import read_xspace
from helpers.tooling.speed import layer_flops

IDLE = "idle (no op running)"
CATEGORIES = (
    "conv forward",
    "conv weight gradient",
    "conv input gradient",
    "dense (matmul)",
    "pooling",
    "activation and bias gradients",
    "dropout",
    "softmax and loss",
    "optimizer update",
    "metrics",
    "batch gather",
    "other ops",
)


def op_category(name: str, kind: str, optimizer_name: str = "adam") -> str:
    """The category of one op, from its node name and its kernel (the op type TensorFlow ran,
    e.g. ``_MklNativeConv2DBackpropFilterWithBias`` for oneDNN's fused weight gradient)."""
    # The name scopes the op sits in, without the ones calls and loops add around a function
    # body ("StatefulPartitionedCall/", "while/body/_1/while/").
    scope = [part for part in name.split("/")[:-1]
             if part not in ("StatefulPartitionedCall", "while", "body")
             and not re.fullmatch(r"_\d+", part)]
    if "Conv2DBackpropFilter" in kind:
        return "conv weight gradient"
    if "Conv2DBackpropInput" in kind:
        return "conv input gradient"
    if "Conv2D" in kind:
        return "conv forward"
    if "MatMul" in kind:
        return "dense (matmul)"
    if "MaxPool" in kind or "AvgPool" in kind:
        return "pooling"
    if kind in ("ReluGrad", "BiasAddGrad"):
        return "activation and bias gradients"
    if any("dropout" in part for part in scope):
        return "dropout"
    if any(re.fullmatch(rf"{re.escape(optimizer_name)}(_\d+)?", part)  # "adam", "adam_1"...
           for part in scope):
        return "optimizer update"
    if "Softmax" in kind or any("crossentropy" in part for part in scope):
        return "softmax and loss"
    if kind in ("ArgMax", "Equal", "Cast") or any(part in ("compile_metrics", "mean", "accuracy")
                                                  for part in scope):
        return "metrics"
    if kind == "GatherV2" and not scope:
        return "batch gather"
    return "other ops"


def category_flops(model: keras.Model) -> dict[str, int]:
    """Training FLOPs per sample of the categories that do the model's multiply-adds. The first
    layer gets no input gradient (its input is the data), as in
    `helpers.tooling.speed.training_flops_per_sample`."""
    conv_layers = {layer.name for layer in model.layers
                   if isinstance(layer, keras.layers.Conv2D)}
    flops = dict.fromkeys(("conv forward", "conv weight gradient", "conv input gradient",
                           "dense (matmul)"), 0)
    for position, (name, forward) in enumerate(layer_flops(model).items()):
        if name in conv_layers:
            flops["conv forward"] += forward
            flops["conv weight gradient"] += forward
            flops["conv input gradient"] += forward if position else 0
        else:
            flops["dense (matmul)"] += forward * (3 if position else 2)
    return flops


OP_EVENT = re.compile(r"(?P<op>[^\s:]+):(?P<kernel>[A-Za-z_]\w*)")


def read_op_events(trace_file: str | Path) -> pd.DataFrame:
    """Every op kernel execution in an ``.xplane.pb`` trace: node name, kernel, start and end (in
    picoseconds, one clock for all threads) and thread. TensorFlow names these trace events
    ``"<node name>:<kernel>"``, with no spaces; the profiler's own events
    (``ExecutorState::Process``) and the Python side's (``EagerLocalExecute: <function>``, which
    spans a whole call) do not match that and are skipped."""
    space = read_xspace(trace_file)
    rows = []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            base = line.timestamp_ns * 1000
            for event in line.events:
                match = OP_EVENT.fullmatch(plane.event_metadata[event.metadata_id].name)
                if match is None:
                    continue
                start = base + event.offset_ps
                rows.append((match["op"], match["kernel"], start, start + event.duration_ps,
                             line.name))
    return pd.DataFrame(rows, columns=["op", "kernel", "start_ps", "end_ps", "thread"])


def attribute_wall_time(events: pd.DataFrame) -> tuple[pd.Series, int]:
    """Split the time during which ops run among them (equal shares while several run at once).
    Returns the picoseconds attributed to each row of `events` and the busy picoseconds (the
    length of the union of all op intervals)."""
    starts = events["start_ps"].to_numpy()
    ends = events["end_ps"].to_numpy()
    boundaries = np.unique(np.concatenate([starts, ends]))
    lengths = np.diff(boundaries)
    # running[i] = number of ops running during [boundaries[i], boundaries[i+1])
    opened = np.searchsorted(boundaries, starts)
    closed = np.searchsorted(boundaries, ends)
    delta = np.zeros(len(boundaries) + 1, dtype=np.int64)
    np.add.at(delta, opened, 1)
    np.add.at(delta, closed, -1)
    running = np.cumsum(delta)[:-1][:len(lengths)]
    share = np.where(running > 0, lengths / np.maximum(running, 1), 0.0)
    cumulative = np.concatenate([[0.0], np.cumsum(share)])
    attributed = cumulative[closed] - cumulative[opened]
    return pd.Series(attributed, index=events.index), int(lengths[running > 0].sum())


@dataclass
class EpochProfile:
    """One profiled epoch. `ops`: a row per op node (kernel, category, calls and attributed ms per
    step); `categories`: a row per category plus the idle row, with ms per step, share of the
    epoch's wall time and, for the FLOP categories, training FLOPs per sample."""

    ops: pd.DataFrame
    categories: pd.DataFrame
    wall_seconds: float
    steps: int
    samples: int
    flops_per_sample: int

    @property
    def wall_ms_per_step(self) -> float:
        return 1000 * self.wall_seconds / self.steps

    def ms_per_step(self, category: str) -> float:
        return float(self.categories.set_index("category").loc[category, "ms_per_step"])


def profile_epoch(runner) -> EpochProfile:
    """Run one epoch of `runner` (from `helpers.tooling.speed.make_runner`, warmed up beforehand
    so that tracing is not in it) under the profiler, and read the trace back (written to a
    temporary directory, removed afterwards)."""
    workdir = Path(tempfile.mkdtemp(prefix="profile-"))
    try:
        tf.profiler.experimental.start(str(workdir))
        try:
            seconds = runner.run_epoch()
        finally:
            tf.profiler.experimental.stop()
        traces = sorted(workdir.glob("plugins/profile/*/*.xplane.pb"))
        if not traces:
            raise RuntimeError(f"the profiler wrote no .xplane.pb trace under {workdir}")
        events = read_op_events(traces[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if events.empty:
        raise RuntimeError("the trace holds no op kernel events")
    return _profile_tables(events, runner, seconds)


def profile_rounds(runners: dict, rounds: int = 3) -> dict[str, EpochProfile]:
    """Profile `rounds` epochs of every runner (warmed up beforehand), the runners taking turns
    as in `helpers.tooling.speed.measure` (order rotated each round), and keep for each the
    profile of its median epoch by wall time -- a whole epoch as it ran, not a mix of categories
    from different epochs. One epoch alone can land on a slow moment of the machine."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds}; need at least 1")
    names = list(runners)
    profiles: dict[str, list[EpochProfile]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            profiles[name].append(profile_epoch(runners[name]))
    return {name: sorted(found, key=lambda p: p.wall_seconds)[(len(found) - 1) // 2]
            for name, found in profiles.items()}


def _profile_tables(events: pd.DataFrame, runner, seconds: float) -> EpochProfile:
    """The per-op and per-category tables of one epoch's op events."""
    model = runner.model
    samples = runner.samples_per_epoch
    steps = math.ceil(samples / runner.batch_size)
    optimizer_name = model.optimizer.name
    events = events.assign(
        category=[op_category(name, kind, optimizer_name)
                  for name, kind in zip(events["op"], events["kernel"])],
    )
    events["attributed_ps"], busy_ps = attribute_wall_time(events)
    per_op = (events.groupby(["op", "kernel", "category"], as_index=False)
              .agg(calls=("op", "size"), attributed_ps=("attributed_ps", "sum")))
    per_op["calls_per_step"] = per_op["calls"] / steps
    per_op["ms_per_step"] = per_op["attributed_ps"] / 1e9 / steps
    per_op = (per_op.drop(columns=["calls", "attributed_ps"])
              .sort_values("ms_per_step", ascending=False, ignore_index=True))

    wall_ms = 1000 * seconds / steps
    by_category = per_op.groupby("category")["ms_per_step"].sum()
    flops = category_flops(model)
    rows = [{"category": name, "ms_per_step": float(by_category.get(name, 0.0))}
            for name in CATEGORIES]
    rows.append({"category": IDLE, "ms_per_step": max(wall_ms - busy_ps / 1e9 / steps, 0.0)})
    categories = pd.DataFrame(rows)
    categories["share_of_wall"] = categories["ms_per_step"] / wall_ms
    categories["flops_per_sample"] = categories["category"].map(flops)
    return EpochProfile(per_op, categories, seconds, steps, samples,
                        int(sum(flops.values())))


def utilization_bounds(profile: EpochProfile, peak_gflops: float) -> dict[str, float]:
    """Fraction of the matmul peak reached by the profiled epoch as it ran, and what it would
    reach with the idle time gone, and with only the FLOP kernels left (all other ops and idle
    time gone) -- the ceiling for any loop that runs these kernels."""
    table = profile.categories.set_index("category")
    flop_ms = float(table.loc[table["flops_per_sample"].notna(), "ms_per_step"].sum())
    busy_ms = profile.wall_ms_per_step - float(table.loc[IDLE, "ms_per_step"])
    flops_per_step = profile.flops_per_sample * profile.samples / profile.steps

    def share(ms):
        return flops_per_step / (ms * 1e6) / peak_gflops

    return {
        "as_run": share(profile.wall_ms_per_step),
        "without_idle": share(busy_ms),
        "flop_kernels_only": share(flop_ms),
    }
