"""Issue #22: every command line refuses a bad option, or an impossible combination, with a
one-line message naming the option and what is allowed, exit status 2 and no traceback, and
writes nothing -- not into a folder the project did not make (a sentinel file stays the only
thing in it, byte for byte), not anywhere else in the test's folder.

Most cases call each command's ``main(argv)`` in this process (argparse's usage error is a
SystemExit); a handful run the real command in a subprocess, where "no traceback, exit status 2"
is proved end to end, and that no TensorFlow start-up line comes before the message. Only the
cases that check a method's name import TensorFlow: every other check runs before it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import folder_snapshot

from helpers.notebook.quiet_tensorflow import is_start_up_line
from helpers.threads import threads_to_reproduce
from helpers.tooling import launcher, notebook_index, report, run_ablation, run_heldout

# Argument parsing and folder checks: the same with any versions.
pytestmark = pytest.mark.versionless

REPO = Path(__file__).resolve().parent.parent
FULL_SCALE = REPO / "results" / "full-scale"
# The thread count FOREIGN/../results records (below): not this process's own without --threads
# (the cores, or TF_NUM_INTRAOP_THREADS), so that a run there without --threads is refused; and
# another count than both.
RECORDED_THREADS = threads_to_reproduce(0) + 1
OTHER_THREADS = RECORDED_THREADS + 1


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMMANDS = {
    "run_ablation": run_ablation.main,
    "run_heldout": run_heldout.main,
    "launcher": launcher.main,
    "report": report.main,
    "notebook_index": notebook_index.main,
    **{name: _benchmark(name).main for name in (
        "throughput", "op_profile", "bf16_accuracy", "memory_per_model", "notebook_memory")},
}

# In the arguments, FOREIGN is a folder the project did not make (it holds a sentinel file),
# FILE that sentinel file, NEW a folder that does not exist, OUT a CSV in NEW.
ABLATION = ["run_ablation", "--results-dir", "NEW"]
HELDOUT = ["run_heldout", "NEW"]
REPLICAS = ["launcher", "--replicas", "2"]
WORKERS = ["launcher", "--workers", "2"]
THROUGHPUT = ["throughput", "--csv", "OUT"]
PROFILE = ["op_profile", "--csv", "OUT"]
BF16 = ["bf16_accuracy", "--csv", "OUT"]
MEMORY = ["memory_per_model", "--out", "NEW"]
CASES = [
    # -- the table
    (["run_ablation", "--results-dir", "FOREIGN"],
     "parameter --results-dir='FOREIGN' is not allowed: the folder is not empty and this project "
     "did not make it (no settings.json in it); give a new folder, an empty one, or one this "
     "project made"),
    ([*HELDOUT, "--epochs", "0"], "parameter --epochs=0 is not allowed: it must be >= 1"),
    ([*ABLATION, "--folds", "1"], "parameter --folds=1 is not allowed: it must be >= 2"),
    ([*ABLATION, "--subset", "-5"],
     "parameter --subset=-5 is not allowed: it must be 0 (all 60000 images) or from 100 "
     "(10 classes x 10 folds) to 60000"),
    (["launcher", "--workers", "-1"], "parameter --workers=-1 is not allowed: it must be >= 2"),
    ([*REPLICAS, "--samples", "3", "--batch-size", "2"],
     "parameter --samples=3 is not allowed: its last batch of --batch-size 2 would hold 1 "
     "image(s), fewer than the 2 replicas (each needs one): choose sizes whose remainder is 0 "
     "or at least 2"),
    (["report", "NEW"],
     "parameter results='NEW' is not allowed: it must be a results folder with a settings.json"),
    ([*HELDOUT, "--methods", "bogus"],
     "parameter --methods=['bogus'] is not allowed: it must be a non-empty list from ['fit', "),
    # -- run_ablation, every option
    (["run_ablation", "--results-dir", "FILE"],
     "parameter --results-dir='FILE' is not allowed: it is a file"),
    ([*ABLATION, "--folds", "2", "--subset", "15"],
     "parameter --subset=15 is not allowed: it must be 0 (all 60000 images) or from 20 "
     "(10 classes x 2 folds) to 60000"),
    ([*ABLATION, "--epochs", "0"], "parameter --epochs=0 is not allowed: it must be >= 1"),
    ([*ABLATION, "--batch-size", "0"],
     "parameter --batch-size=0 is not allowed: it must be from 1 to 54000"),
    ([*ABLATION, "--folds", "2", "--subset", "100", "--batch-size", "51"],
     "parameter --batch-size=51 is not allowed: it must be from 1 to 50"),
    ([*ABLATION, "--seed", "-1"], "parameter --seed=-1 is not allowed: it must be >= 0"),
    ([*ABLATION, "--threads", "-1"], "parameter --threads=-1 is not allowed: it must be >= 0"),
    ([*ABLATION, "--steps-per-execution", "0"],
     "parameter --steps-per-execution=0 is not allowed: it must be >= 1"),
    ([*ABLATION, "--folds", "two"], "argument --folds: invalid int value: 'two'"),
    ([*ABLATION, "--baseline", str(FULL_SCALE), "--variants", "naive+dropout", "bogus"],
     "parameter --variants=['naive+dropout', 'bogus'] is not allowed: every name must be one of "),
    ([*ABLATION, "--baseline", "NEW/none"],
     "parameter --baseline='NEW/none' is not allowed: it must be a results folder with a "
     "settings.json"),
    ([*ABLATION, "--baseline", str(FULL_SCALE), "--epochs", "2"],
     f"parameter --baseline={str(FULL_SCALE)!r} is not allowed: its results were made with other "
     "settings (epochs: saved 30, now 2); use another folder, or the same settings"),
    (ABLATION, "parameter --baseline=None is not allowed: give the results folder of the "
               "baselines (fit and naive, e.g. results/full-scale): NEW holds no runs of them"),
    ([*ABLATION, "--baseline", str(FULL_SCALE), "--summarize-only"],
     "parameter --results-dir='NEW' is not allowed: it must be a results folder with a "
     "settings.json"),
    (["run_ablation", "--results-dir", "FOREIGN/../results", "--epochs", "2"],
     "parameter --results-dir='FOREIGN/../results' is not allowed: its results were made with "
     "other settings (epochs: saved 30, now 2)"),
    # -- run_heldout, every option
    (["run_heldout", "FOREIGN"], "parameter results_dir='FOREIGN' is not allowed: the folder is "
                                 "not empty and this project did not make it"),
    ([*HELDOUT, "--subset", "5"],
     "parameter --subset=5 is not allowed: it must be 0 (all 60000 images) or from 10 "
     "(10 classes) to 60000"),
    ([*HELDOUT, "--subset", "100", "--batch-size", "101"],
     "parameter --batch-size=101 is not allowed: it must be from 1 to 100"),
    ([*HELDOUT, "--seed", "-1"], "parameter --seed=-1 is not allowed: it must be >= 0"),
    ([*HELDOUT, "--threads", "-2"], "parameter --threads=-2 is not allowed: it must be >= 0"),
    (["run_heldout", "FOREIGN/../results", "--epochs", "2"],
     "parameter results_dir='FOREIGN/../results' is not allowed: its results were made with "
     "other settings (epochs: saved 30, now 2)"),
    (["run_heldout", "FOREIGN/../results", "--epochs", "30", "--threads", str(OTHER_THREADS)],
     f"parameter --threads={OTHER_THREADS} is not allowed: the results in FOREIGN/../results "
     f"were made with {RECORDED_THREADS} intra-op thread(s) and reproduce bit for bit only with "
     f"as many; give --threads {RECORDED_THREADS}"),
    (["run_ablation", "--results-dir", "FOREIGN/../results", "--baseline", str(FULL_SCALE)],
     "parameter --threads=0 is not allowed: the results in FOREIGN/../results were made with "
     f"{RECORDED_THREADS} intra-op thread(s)"),
    # -- launcher, every option and combination
    (["launcher"], "parameter --workers=None is not allowed: give --workers N (worker "
                   "processes) or --replicas N (logical CPU devices in this process)"),
    (["launcher", "--workers", "1"], "parameter --workers=1 is not allowed: it must be >= 2"),
    (["launcher", "--replicas", "0"], "parameter --replicas=0 is not allowed: it must be >= 1"),
    (["launcher", "--worker-index", "-1"],
     "parameter --worker-index=-1 is not allowed: it must be >= 0"),
    (["launcher", "--workers", "2", "--replicas", "2"],
     "argument --replicas: not allowed with argument --workers"),
    ([*WORKERS, "--trainers", "matched"],
     "parameter --trainers=['matched'] is not allowed: matched trains on one device; use it "
     "with --replicas"),
    ([*REPLICAS, "--trainers", "bogus"], "argument --trainers: invalid choice: 'bogus'"),
    ([*REPLICAS, "--epochs", "0"], "parameter --epochs=0 is not allowed: it must be >= 1"),
    ([*REPLICAS, "--samples", "0"], "parameter --samples=0 is not allowed: it must be >= 1"),
    ([*REPLICAS, "--samples", "59900"],
     "parameter --samples=59900 is not allowed: --samples + --val-samples must be from 10 (one "
     "image per class) to 60000 (MNIST's training images); now 60060"),
    ([*REPLICAS, "--val-samples", "0"],
     "parameter --val-samples=0 is not allowed: it must be >= 1"),
    ([*REPLICAS, "--val-samples", "129"],
     "parameter --val-samples=129 is not allowed: its last batch of --batch-size 64 would hold "
     "1 image(s), fewer than the 2 replicas"),
    ([*WORKERS, "--samples", "641"],
     "parameter --samples=641 is not allowed: its last batch of --batch-size 64 would hold 1 "
     "image(s), fewer than the 2 replicas"),
    ([*REPLICAS, "--batch-size", "0"], "parameter --batch-size=0 is not allowed: it must be >= 1"),
    (["launcher", "--replicas", "4", "--batch-size", "3"],
     "parameter --batch-size=3 is not allowed: it must be >= the number of replicas (4): each "
     "replica needs at least one sample of every batch"),
    ([*REPLICAS, "--seed", "-1"], "parameter --seed=-1 is not allowed: it must be >= 0"),
    ([*REPLICAS, "--dropout", "1"],
     "parameter --dropout=1.0 is not allowed: it must be >= 0 and < 1"),
    ([*REPLICAS, "--l2", "-0.1"], "parameter --l2=-0.1 is not allowed: it must be >= 0"),
    ([*REPLICAS, "--threads", "-1"], "parameter --threads=-1 is not allowed: it must be >= 0"),
    ([*WORKERS, "--timeout", "0"], "parameter --timeout=0.0 is not allowed: it must be > 0"),
    ([*WORKERS, "--restarts", "-1"], "parameter --restarts=-1 is not allowed: it must be >= 0"),
    ([*REPLICAS, "--restarts", "1"],
     "parameter --restarts=1 is not allowed: it applies to --workers (restarting worker "
     "processes); leave it out otherwise"),
    ([*WORKERS, "--fail-worker", "2"],
     "parameter --fail-worker=2 is not allowed: it must be from 0 to 1"),
    ([*REPLICAS, "--fail-worker", "0"],
     "parameter --fail-worker=0 is not allowed: it applies to --workers"),
    ([*REPLICAS, "--out", "FOREIGN"],
     "parameter --out='FOREIGN' is not allowed: the folder is not empty and this project did not "
     "make it (no .tape-vs-fit-output in it)"),
    ([*WORKERS, "--out", "FILE"], "parameter --out='FILE' is not allowed: it is a file"),
    # -- report
    (["report", str(FULL_SCALE), "--readme", "FOREIGN/README.md"],
     "parameter --readme='FOREIGN/README.md' is not allowed: it must be an existing file"),
    (["report", str(FULL_SCALE), "--readme", "FILE"],
     "parameter --readme='FILE' is not allowed: it needs exactly one <!-- results:start --> ... "
     "<!-- results:end --> block"),
    (["report", str(FULL_SCALE), "--ablation", "FOREIGN"],
     "parameter --ablation='FOREIGN' is not allowed: it must be a results folder with a "
     "settings.json"),
    (["report", str(FULL_SCALE), "--ablation", str(REPO / "results" / "ablation"), "--notebook",
      "FILE"], "parameter --notebook='FILE' is not allowed: it needs exactly one "
               "<!-- ablation-answer:start --> ... <!-- ablation-answer:end --> block"),
    (["report", "FOREIGN/../results"],
     "parameter results='FOREIGN/../results' is not allowed: the results folder lacks table.csv"),
    # -- notebook_index
    (["notebook_index", "--root", "FOREIGN"],
     "parameter --root='FOREIGN' is not allowed: it must be a checkout of this repository (a "
     "folder with README.md and notebooks/)"),
    # -- benchmarks
    ([*THROUGHPUT, "--samples", "10"],
     "parameter --samples=10 is not allowed: it must be from 20 to 60000"),
    ([*THROUGHPUT, "--batch-size", "0"],
     "parameter --batch-size=0 is not allowed: it must be >= 1"),
    ([*THROUGHPUT, "--peak-size", "0"], "parameter --peak-size=0 is not allowed: it must be >= 1"),
    ([*THROUGHPUT, "--epochs", "0"], "parameter --epochs=0 is not allowed: it must be >= 1"),
    ([*THROUGHPUT, "--warmup", "-1"], "parameter --warmup=-1 is not allowed: it must be >= 0"),
    ([*THROUGHPUT, "--repeats", "0"], "parameter --repeats=0 is not allowed: it must be >= 1"),
    ([*THROUGHPUT, "--peak-runs", "0"], "parameter --peak-runs=0 is not allowed: it must be >= 1"),
    ([*THROUGHPUT, "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["throughput", "--csv", "FOREIGN/throughput.csv"],
     "parameter --csv='FOREIGN' is not allowed: the folder is not empty and this project did not "
     "make it"),
    (["throughput", "--csv", "FOREIGN"],
     "parameter --csv='FOREIGN' is not allowed: it is a folder; give the name of a file to write"),
    ([*THROUGHPUT, "--methods", "fit_auto", "bogus"],
     "parameter --methods=['fit_auto', 'bogus'] is not allowed: every name must be one of "),
    ([*PROFILE, "--rounds", "0"], "parameter --rounds=0 is not allowed: it must be >= 1"),
    ([*PROFILE, "--warmup", "0"], "parameter --warmup=0 is not allowed: it must be >= 1"),
    ([*PROFILE, "--threads", "-1"], "parameter --threads=-1 is not allowed: it must be >= 0"),
    ([*PROFILE, "--quick", "--csv", "FOREIGN/profile.csv"],
     "parameter --csv='FOREIGN' is not allowed: the folder is not empty"),
    ([*BF16, "--folds", "1"], "parameter --folds=1 is not allowed: it must be >= 2"),
    ([*BF16, "--samples", "50"],
     "parameter --samples=50 is not allowed: it must be 0 (all 60000 images) or from 60 "
     "(10 classes x 6 folds) to 60000"),
    ([*BF16, "--epochs", "0"], "parameter --epochs=0 is not allowed: it must be >= 1"),
    ([*BF16, "--batch-size", "0"], "parameter --batch-size=0 is not allowed: it must be from 1"),
    ([*BF16, "--seed", "-1"], "parameter --seed=-1 is not allowed: it must be >= 0"),
    (["bf16_accuracy", "--csv", "FOREIGN/bf16.csv"],
     "parameter --csv='FOREIGN' is not allowed: the folder is not empty"),
    ([*BF16, "--methods", "bogus"],
     "parameter --methods=['bogus'] is not allowed: it must be a non-empty list from "),
    ([*MEMORY, "--warmup", "-1"], "parameter --warmup=-1 is not allowed: it must be >= 0"),
    ([*MEMORY, "--epochs", "0"], "parameter --epochs=0 is not allowed: it must be >= 1"),
    ([*MEMORY, "--batch-size", "0"], "parameter --batch-size=0 is not allowed: it must be >= 1"),
    (["memory_per_model", "--quick", "--out", "FOREIGN"],
     "parameter --out='FOREIGN' is not allowed: the folder is not empty and this project did not "
     "make it (no .memory_per_model in it)"),
    (["notebook_memory", "zz", "--out", "NEW"],
     "parameter prefixes=['zz'] is not allowed: no notebook in notebooks/ starts with any of "
     "them"),
    (["notebook_memory", "--out", "FOREIGN"],
     "parameter --out='FOREIGN' is not allowed: the folder is not empty and this project did not "
     "make it"),
]


@pytest.fixture
def places(tmp_path):
    """The paths the cases name, in `tmp_path`: FOREIGN (a folder holding one sentinel file,
    FILE), NEW (no such folder), OUT (a CSV in NEW)."""
    foreign = tmp_path / "someone_elses"
    foreign.mkdir()
    (foreign / "sentinel.txt").write_text("not the project's\n")
    # FOREIGN/../results: a results folder the project made, with the committed settings, made
    # with RECORDED_THREADS threads
    results = tmp_path / "results"
    results.mkdir()
    (results / "settings.json").write_bytes((FULL_SCALE / "settings.json").read_bytes())
    (results / "run_info.json").write_text(json.dumps({"threads_to_reproduce": RECORDED_THREADS}))
    return {"FOREIGN": str(foreign), "FILE": str(foreign / "sentinel.txt"),
            "NEW": str(tmp_path / "new"), "OUT": str(tmp_path / "new" / "table.csv")}


def substituted(text: str, places: dict[str, str]) -> str:
    for name in ("FOREIGN", "FILE", "NEW", "OUT"):
        text = text.replace(name, places[name])
    return text


def start_up_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if is_start_up_line(line)]


def case_id(case) -> str:
    return " ".join(case[0])


@pytest.mark.parametrize("argv, message", CASES, ids=[case_id(case) for case in CASES])
def test_a_bad_option_is_one_line_exit_2_and_nothing_written(argv, message, places, tmp_path,
                                                             capsys, monkeypatch):
    monkeypatch.setenv("TAPE_VS_FIT_SMOKE", "1")  # a command line must not shrink anything
    before = folder_snapshot(tmp_path)
    command, *arguments = argv
    with pytest.raises(SystemExit) as stop:
        COMMANDS[command]([substituted(argument, places) for argument in arguments])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    last = error.strip().splitlines()[-1]
    assert ": error: " in last and substituted(message, places) in last.split(": error: ")[1], last
    assert folder_snapshot(tmp_path) == before  # byte for byte: the sentinel's folder above all


# The table, end to end: the real command in a fresh process.
END_TO_END = [
    ["-m", "helpers.tooling.run_ablation", "--results-dir", "FOREIGN"],
    ["-m", "helpers.tooling.run_heldout", "NEW", "--epochs", "0"],
    ["-m", "helpers.tooling.run_ablation", "--results-dir", "NEW", "--subset", "-5"],
    ["-m", "helpers.tooling.launcher", "--workers", "-1"],
    ["-m", "helpers.tooling.launcher", "--replicas", "2", "--samples", "3", "--batch-size", "2"],
    ["benchmarks/throughput.py", "--csv", "FOREIGN/throughput.csv"],
    ["-m", "helpers.tooling.run_heldout", "NEW", "--methods", "bogus"],  # imports TensorFlow
]


@pytest.mark.parametrize("argv", END_TO_END, ids=" ".join)
def test_end_to_end_exit_2_without_traceback(argv, places, tmp_path):
    before = folder_snapshot(tmp_path)
    done = subprocess.run([sys.executable, *(substituted(a, places) for a in argv)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and not done.stdout
    assert not start_up_lines(done.stderr), done.stderr
    assert ": error: parameter " in done.stderr.strip().splitlines()[-1], done.stderr
    assert folder_snapshot(tmp_path) == before
