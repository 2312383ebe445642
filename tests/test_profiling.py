"""helpers.tooling.profiling: the trace is read back, every op lands in a category, wall time is
split exactly, and benchmarks/op_profile.py runs. No timing is asserted."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers.data import load_mnist
from helpers.model import create_cnn
from helpers.tooling import profiling, speed

# Pinned versions only: benchmarks/op_profile.py runs with .venv (the README's commands), so
# the oldest-versions run leaves it out.
pytestmark = pytest.mark.pinned

REPO = Path(__file__).resolve().parent.parent


def _events(*intervals):
    return pd.DataFrame(
        [(f"op{i}", "Kind", start, end, "t") for i, (start, end) in enumerate(intervals)],
        columns=["op", "kernel", "start_ps", "end_ps", "thread"],
    )


def test_overlapping_ops_share_the_time_they_overlap():
    attributed, busy = profiling.attribute_wall_time(_events((0, 10), (5, 15), (20, 22)))
    # op0 alone 0-5, with op1 5-10 (half each), op1 alone 10-15; a gap 15-20; op2 alone 20-22
    assert list(attributed) == [7.5, 7.5, 2.0]
    assert busy == 17


def test_nested_and_identical_intervals():
    attributed, busy = profiling.attribute_wall_time(_events((0, 12), (3, 6), (3, 6)))
    assert list(attributed) == [3 + 1 + 6, 1, 1]
    assert busy == 12


@pytest.mark.parametrize("label, is_op", [
    ("article_cnn_1/conv2d_1/Relu:_MklNativeFusedConv2D", True),
    ("GatherV2:GatherV2", True),
    ("ExecutorState::Process", False),
    ("ThreadpoolListener::StartRegion", False),
    # the Python side's span of a whole function call (seen on the caller's thread in Jupyter)
    ("EagerLocalExecute: __inference_train_step_669", False),
    ("EagerKernelExecute", False),
])
def test_only_op_kernel_events_are_read(label, is_op):
    assert (profiling.OP_EVENT.fullmatch(label) is not None) == is_op


@pytest.mark.parametrize("name, kind, category", [
    ("gradient_tape/article_cnn_1/conv2d_1_2/convolution/Conv2DBackpropFilter",
     "_MklNativeConv2DBackpropFilterWithBias", "conv weight gradient"),
    ("StatefulPartitionedCall/gradient_tape/article_cnn_1/conv2d_1_2/convolution/"
     "Conv2DBackpropInput", "_MklNativeConv2DBackpropInput", "conv input gradient"),
    ("article_cnn_1/conv2d_1/Relu", "_MklNativeFusedConv2D", "conv forward"),
    ("article_cnn_1/dense_1/BiasAdd", "_MklNativeFusedMatMul", "dense (matmul)"),
    ("article_cnn_1/max_pooling2d_1/MaxPool2d", "_MklNativeMaxPool", "pooling"),
    ("article_cnn_1/dropout_1/stateless_dropout/stateless_random_uniform/"
     "StatelessRandomUniformV2", "StatelessRandomUniformV2", "dropout"),
    ("StatefulPartitionedCall/adam/AssignSubVariableOp_2", "AssignSubVariableOp",
     "optimizer update"),
    ("while/body/_1/while/adam_1/Sqrt_5", "Sqrt", "optimizer update"),
    ("categorical_crossentropy/softmax_cross_entropy_with_logits",
     "SoftmaxCrossEntropyWithLogits", "softmax and loss"),
    ("GatherV2", "GatherV2", "batch gather"),
    ("while/body/_1/while/GatherV2_1", "GatherV2", "batch gather"),
    ("ArgMax_1", "ArgMax", "metrics"),
    ("Bitcast", "Bitcast", "other ops"),
])
def test_op_categories(name, kind, category):
    assert profiling.op_category(name, kind, "adam") == category


def test_category_flops_add_up_to_the_training_flops():
    model = create_cnn(0)
    flops = profiling.category_flops(model)
    assert sum(flops.values()) == speed.training_flops_per_sample(model)
    # the first layer (a conv) has no input gradient
    first = next(iter(speed.layer_flops(model).values()))
    assert flops["conv input gradient"] == flops["conv forward"] - first


@pytest.fixture(scope="module")
def profiled():
    """One profiled epoch of the matched loop: 130 images = 64 + 64 + a partial batch of 2."""
    x, y = load_mnist("train", subset=130, seed=0)
    runner = speed.make_runner("matched_graph", x, y, batch_size=64, seed=0)
    runner.run_epoch()
    return profiling.profile_epoch(runner)


def test_profile_splits_the_whole_wall_time(profiled):
    table = profiled.categories
    assert list(table["category"]) == [*profiling.CATEGORIES, profiling.IDLE]
    assert math.isclose(table["ms_per_step"].sum(), profiled.wall_ms_per_step, rel_tol=1e-9)
    assert math.isclose(table["share_of_wall"].sum(), 1.0, rel_tol=1e-9)
    assert profiled.steps == 3


def test_profile_sees_every_convolution_kernel_once_per_step(profiled):
    ops = profiled.ops
    for category, layers in (("conv forward", 2), ("conv weight gradient", 2),
                             ("conv input gradient", 1)):
        rows = ops[ops["category"] == category]
        assert len(rows) == layers, category
        assert (rows["calls_per_step"] == 1.0).all(), category
        assert (rows["ms_per_step"] > 0).all(), category


def test_utilization_bounds_are_ordered(profiled):
    bounds = profiling.utilization_bounds(profiled, peak_gflops=100.0)
    assert 0 < bounds["as_run"] <= bounds["without_idle"] <= bounds["flop_kernels_only"]


def test_profile_rounds_take_turns_and_keep_the_median_epoch(monkeypatch):
    calls = []
    walls = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}

    class Profile:
        def __init__(self, wall_seconds):
            self.wall_seconds = wall_seconds

    def fake_profile_epoch(runner):
        calls.append(runner)
        return Profile(next(walls[runner]))

    monkeypatch.setattr(profiling, "profile_epoch", fake_profile_epoch)
    kept = profiling.profile_rounds({"a": "a", "b": "b"}, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]  # the order rotates every round
    assert kept["a"].wall_seconds == 2.0 and kept["b"].wall_seconds == 5.0
    with pytest.raises(ValueError, match="rounds=0"):
        profiling.profile_rounds({"a": "a"}, rounds=0)


def test_quick_op_profile_with_one_thread_writes_both_tables(tmp_path):
    """benchmarks/op_profile.py as a script (--threads must act before TensorFlow starts, so in a
    fresh process): a row per category and method, and the per-op table."""
    csv = tmp_path / "op_profile.csv"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "op_profile.py"), "--quick",
                    "--threads", "1", "--methods", "fit_auto", "matched_spe", "--csv", str(csv)],
                   check=True, capture_output=True, timeout=300)
    table = pd.read_csv(csv)
    assert (table["threads"] == 1).all()
    assert list(table["method"].unique()) == ["fit_auto", "matched_spe"]
    assert len(table) == 2 * (len(profiling.CATEGORIES) + 1)
    ops = pd.read_csv(tmp_path / "op_profile_ops.csv")
    assert set(ops["method"]) == {"fit_auto", "matched_spe"}
    assert (ops["ms_per_step"] >= 0).all()
    for written in (table, ops):
        assert (written["load_average_start"] >= 0).all() and "under_load" in written
    # 4 steps an epoch: too few to compare with the matmul peak, so no utilization is written
    utilization = [column for column in table if column.startswith("utilization")]
    assert len(utilization) == 3 and table[utilization].isna().all().all()
