"""benchmarks/memory_per_model.py runs with tiny settings and writes its CSVs; bad options and a
foreign output folder are refused with a one-line message and exit status 2. No memory figure
is asserted (they depend on the machine)."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A measurement script's options, files and arithmetic: the same with any versions.
pytestmark = pytest.mark.versionless

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "memory_per_model.py"


def _load():
    spec = importlib.util.spec_from_file_location("memory_per_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()


@pytest.mark.parametrize("argv, message", [
    (["--models", "3"], "parameter --models=3 is not allowed: it must be >= 7"),
    (["--configs", "fit,nonsense"], "parameter --configs='fit,nonsense' is not allowed: it must "
                                    "be a comma-separated list from create_only, "),
    (["--images", "5"], "parameter --images=5 is not allowed: it must be from 16 to 40000"),
    (["--models", "many"], "invalid int value"),
])
def test_bad_options_exit_2_with_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        bench.main([*argv, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("memory_per_model.py: error:") and message in error
    assert not (tmp_path / "out").exists()


def test_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("someone else's", encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        bench.main(["--quick", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "this project did not make it (no .memory_per_model in it)" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_slope_and_merge(tmp_path):
    slope, intercept = bench.fit_line([6, 7, 8, 9], [100.0, 102.0, 104.0, 106.0])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(88.0)
    rows = [{"config": "fit", "model": m, "rss_mib": 100.0 + 3 * m, "seconds": 1.0,
             "tracing_s": 0.5} for m in range(1, 9)]
    summary = bench.summarize("fit", rows, warmup=2)
    assert summary["slope_mib_per_model"] == pytest.approx(3.0)
    assert summary["models"] == 8 and summary["tracing_s_per_model"] == 0.5
    # an earlier run's other configurations are kept, the re-run one replaced
    with open(tmp_path / "per_model.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=bench.PER_MODEL_FIELDS)
        writer.writeheader()
        writer.writerows([{"config": "naive", "model": 1, "rss_mib": 1.0},
                          {"config": "fit", "model": 1, "rss_mib": 2.0}])
    with open(tmp_path / "summary.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=bench.SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows([{"config": "naive"}, {"config": "fit"}])
    merged_rows, merged = bench.merge_earlier(tmp_path, rows, [summary])
    assert [s["config"] for s in merged] == ["naive", "fit"]
    assert [r["config"] for r in merged_rows] == ["naive"] + ["fit"] * 8


def test_quick_run_writes_its_csvs(tmp_path):
    out = tmp_path / "memory"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--configs", "create_only", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out / "per_model.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["model"]) for r in rows] == [1, 2, 3]
    assert all(float(r["rss_mib"]) > 0 and int(r["runtime_functions"]) >= 0 for r in rows)
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        (summary,) = list(csv.DictReader(handle))
    assert summary["config"] == "create_only" and summary["models"] == "3"
    environment = (out / "environment.txt").read_text(encoding="utf-8")
    assert "measured under load" in environment and "tensorflow:" in environment
    assert (out / bench.MARKER).exists()


def test_reused_model_trains_like_a_fresh_one():
    """The reuse configurations' reset (weights, Dropout seed state, optimizer state) makes the
    one reused model train fold i exactly as a fresh ``create_cnn(seed=i)`` does."""
    import numpy as np

    from helpers.model import create_cnn
    from helpers.training import train_matched

    images = 96
    data = bench.load_data(images)
    reused = bench.ReusedModel("matched", bench.initial_states(2), images, batch_size=32)
    for index in (0, 1):
        reused.train(index, data, images, epochs=1)
    fresh = create_cnn(seed=1)
    train_data, val_data = bench.fold_data(*data, 1, images)
    train_matched(fresh, train_data, val_data, epochs=1, batch_size=32, seed=1, verbose=0)
    for mine, theirs in zip(reused.model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
