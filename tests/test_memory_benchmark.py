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
    assert "tensorflow:" in environment and "load average at the end of each" in environment
    assert ("MEASURED UNDER LOAD" in environment) == (float(summary["load_1min"]) > 1.5)
    assert (out / bench.MARKER).exists()


def test_all_methods_are_the_projects():
    """cv_all's names, spelled out in the script (its parent process imports no helpers), are
    the project's 11 methods: fit, naive, matched and the ablation's variants."""
    from helpers.experiments.ablation import VARIANTS

    assert bench.ALL_METHODS == ("fit", "naive", "matched", *VARIANTS)


def test_readme_quotes_the_committed_summary():
    """results/memory-per-model/README.md's figures are summary.csv's."""
    results = REPO / "results" / "memory-per-model"
    with open(results / "summary.csv", newline="", encoding="utf-8") as handle:
        summary = {row["config"]: row for row in csv.DictReader(handle)}
    readme = (results / "README.md").read_text(encoding="utf-8")

    def figure(config, column="slope_mib_per_model"):
        return f"{float(summary[config][column]):.2f}"

    for config in ("cv", "cv_all", "cv+fresh", "fit", "fit+reuse", "mixed+reuse",
                   "mixed+clear_session"):
        assert f" {figure(config)} " in readme, config
    assert f"grows {figure('cv')} MiB per (method, fold) over {summary['cv']['models']}" in readme
    saved = (float(summary["cv+fresh"]["tracing_s_per_model"])
             - float(summary["cv"]["tracing_s_per_model"]))
    assert (f"{saved:.2f} s per (method, fold) (first step minus median step, "
            f"{figure('cv+fresh', 'tracing_s_per_model')} → "
            f"{figure('cv', 'tracing_s_per_model')} s") in readme
