"""The throughput benchmark runs and reports sanely; the loops it times are the helpers' loops; the
matched loop's compiled step is traced once, partial last batch included. No timing is asserted."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.data import load_mnist
from helpers.model import create_cnn
from helpers.tooling import speed
from helpers.training import DIFFERENCE_KEYS, tape_loop_trainer, train_matched, train_naive

# Pinned versions only: the benchmark scripts run with .venv (the README's commands), so the
# oldest-versions run leaves them out.
pytestmark = pytest.mark.pinned

REPO = Path(__file__).resolve().parent.parent


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "throughput", REPO / "benchmarks" / "throughput.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mnist_130():
    """130 training images: two full batches of 64 and a partial batch of 2; 20 to validate."""
    x, y = load_mnist("train", subset=150, seed=0)
    return (x[:130], y[:130]), (x[130:], y[130:])


def test_quick_benchmark_writes_a_row_per_method(tmp_path):
    csv = tmp_path / "throughput.csv"
    # one method per kind of runner (fit, the naive loop, the matched loop, a dtype policy, worker
    # processes); the other methods' runners: test_an_epoch_reports_its_own_duration below
    methods = ["fit_auto", "naive_eager", "matched_graph", "matched_bf16", "workers1"]
    returned = _load_benchmark().main(["--quick", "--methods", *methods, "--csv", str(csv)])
    table = pd.read_csv(csv)
    assert list(table["method"]) == methods
    assert len(returned) == len(table)
    for column in ("samples_per_s", "gflops", "peak_gflops", "load_average_start",
                   "load_average_end"):
        assert all(math.isfinite(v) and v >= 0 for v in table[column]), column
    # 2 steps an epoch are too few to compare with the matmul peak, loaded machine or not
    assert table["utilization_pct"].isna().all()
    loaded = table[["load_average_start", "load_average_end"]].max(axis=1) > speed.LOAD_LIMIT
    assert (table["under_load"] == loaded).all()
    reference = table.set_index("method").loc[speed.REFERENCE]
    assert reference["ratio_to_fit_auto"] == 1.0
    assert (table["epochs_measured"] == table["epochs"]).all()
    assert table["quick"].all()


def _summary(under_load=False, samples=12800, gflops=(50.0, 60.0), peak=100.0):
    return pd.DataFrame({
        "method": ["fit_auto", "matched_spe"], "description": ["fit", "loop"],
        "samples_per_s": [1000.0, 1200.0], "samples_per_s_q25": [950.0, 1150.0],
        "samples_per_s_q75": [1050.0, 1250.0], "ratio_to_fit_auto": [1.0, 1.2],
        "samples_per_epoch": [samples, samples], "batch_size": 64, "gflops": list(gflops),
        "peak_gflops": peak, "utilization_pct": [100 * g / peak for g in gflops],
        "train_flops_per_sample": 14256384, "load_average_start": 3.0 if under_load else 0.5,
        "load_average_end": 0.4, "under_load": under_load, "cpu_count": 2,
    })


@pytest.mark.parametrize("summary, problem", [
    (_summary(), None),
    (_summary(under_load=True), "under load"),
    (_summary(samples=640), "10 steps an epoch are too few"),
    (_summary(gflops=(50.0, 101.0)), "outpaced"),
], ids=["idle", "under load", "too few steps", "above 100%"])
def test_share_of_the_peak_only_where_it_can_be_measured(summary, problem):
    found = speed.peak_comparison_problem(summary)
    table = speed.format_table(summary)
    if problem is None:
        assert found is None and "% peak" in table
        assert ("measured on an idle machine (load average 0.5 at the start and 0.4 at the end"
                in table)
    else:
        assert problem in found
        assert "% peak" not in table and "GFLOP/s" not in table
        assert f"no share of the matmul peak: {found}" in table
    assert ("UNDER LOAD" in table) == bool(summary["under_load"].iloc[0])


def test_verdicts_compare_interquartile_ranges():
    summary = _summary()
    assert speed.compared_with(summary, "matched_spe") == "faster than"
    assert speed.verdict(summary, "matched_spe") == (
        "matched_spe: 1.20x fit_auto, faster than fit_auto (IQRs apart)")
    summary.loc[1, "samples_per_s_q25"] = 1040.0
    assert speed.compared_with(summary, "matched_spe") == "about as fast as"
    assert speed.compared_with(summary, "fit_auto", "matched_spe") == "about as fast as"


def test_benchmark_always_measures_the_reference():
    assert speed.check_methods(["matched_graph"]) == ["fit_auto", "matched_graph"]
    with pytest.raises(ValueError, match="unknown"):
        speed.check_methods(["fast"])


def test_flop_count_of_the_article_cnn():
    # conv 26x26x(3*3*1)x32, conv 11x11x(3*3*32)x64, dense 1600x10; a multiply-add is 2 FLOPs
    first_conv = 2 * 26 * 26 * 9 * 32
    expected = first_conv + 2 * (11 * 11 * 9 * 32 * 64 + 1600 * 10)
    model = create_cnn(0)
    assert speed.forward_flops(model) == expected
    # forward, weight gradients, input gradients -- but none for the first layer's input
    assert speed.training_flops_per_sample(model) == 3 * expected - first_conv


def _weights_equal(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights(), strict=True))


def test_benchmark_loops_are_the_helpers_loops(mnist_130):
    """One eager epoch of each benchmark loop ends with the weights of the helpers' function."""
    train, val = mnist_130
    naive = speed.make_runner("naive_eager", *train, batch_size=64, seed=3)
    naive.run_epoch()
    reference = create_cnn(3)
    train_naive(reference, train, val, epochs=1, batch_size=64, seed=3, compiled=False)
    assert _weights_equal(naive.model, reference)

    matched = speed.make_runner("matched_eager", *train, batch_size=64, seed=3)
    matched.run_epoch()
    reference = create_cnn(3)
    train_matched(reference, train, val, epochs=1, batch_size=64, seed=3, compiled=False)
    assert _weights_equal(matched.model, reference)

    # a whole epoch per call (3 batches, the partial one last) against train_matched's default
    grouped = speed.make_runner("matched_spe", *train, batch_size=64, seed=3)
    grouped.run_epoch()
    reference = create_cnn(3)
    train_matched(reference, train, val, epochs=1, batch_size=64, seed=3)
    assert _weights_equal(grouped.model, reference)


def test_compiled_matched_step_is_traced_once(mnist_130):
    """Two epochs with a partial last batch (130 = 64 + 64 + 2): one trace. The step takes index
    tensors of unknown length (input_signature [None]), and train_matched builds the optimizer
    before the first call -- else Adam would create its slot variables inside that call and
    tf.function would trace it a second time (tensorflow/python/eager/polymorphic_function/
    polymorphic_function.py, ``_call`` and ``_initialize``)."""
    train, val = mnist_130
    trainer = tape_loop_trainer(create_cnn(0), train, val, batch_size=64, seed=0,
                                fixes=DIFFERENCE_KEYS)  # train_matched's loop
    trainer.train(2)
    assert trainer.train_function.experimental_get_tracing_count() == 1


def test_benchmark_steps_are_traced_once(mnist_130):
    train, _ = mnist_130
    for method in ("matched_graph", "matched_numpy", "matched_tfdata", "matched_spe"):
        runner = speed.make_runner(method, *train, batch_size=64, seed=0)
        runner.run_epoch()
        runner.run_epoch()
        assert runner.trainer.train_function.experimental_get_tracing_count() == 1, method


@pytest.mark.parametrize("method", ["fit_auto", "fit_spe", "naive_eager", "matched_graph",
                                    "matched_numpy", "matched_tfdata", "matched_spe"])
def test_an_epoch_reports_its_own_duration(mnist_130, method):
    """The seconds run_epoch returns lie within the time the call took (XLA left out: slow)."""
    runner = speed.make_runner(method, *mnist_130[0], batch_size=64, seed=0)
    runner.run_epoch()
    started = time.perf_counter()
    seconds = runner.run_epoch()
    assert 0 < seconds <= time.perf_counter() - started
