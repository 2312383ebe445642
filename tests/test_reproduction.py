"""The committed full-scale run reproduces bit for bit: fold 0's first epoch, retrained.

results/full-scale was made by notebook 02 (papermill, 10 folds, 30 epochs, batch 64, all 60,000
training images, seed 0) with TensorFlow's default thread pools: as many threads as cores, 2 on
the machine of its run_info.json, which records that count as ``threads_to_reproduce``. With
that many intra-op and inter-op threads, fold 0's first epoch of fit, the article's loop and the
matched loop gives the committed History values exactly; with 1 thread it does not (e.g. fit's
val_loss 0.08561541885137558 against the committed 0.08610266447067261: a different summation
order), so the test sets the recorded count, in a fresh process because TensorFlow makes its
thread pools once per process.

The folds and the per-fold initial weights come from `cross_validate_mnist` itself (its
`first_folds`), with one epoch instead of 30: every method draws its epochs' batch orders in
sequence, so the first epoch does not depend on how many follow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.experiments.store import ResultsFolder
from helpers.threads import threads_to_reproduce

ROOT = Path(__file__).resolve().parent.parent
FULL_SCALE = ResultsFolder(ROOT / "results" / "full-scale")
METHODS = ("fit", "naive", "matched")
COMPARED = ("loss", "accuracy", "val_loss", "val_accuracy")
THREADS = FULL_SCALE.recorded_run_info()["threads_to_reproduce"]
README = ROOT / "README.md"

RETRAIN = """
import json, sys
import helpers.notebook.quiet_tensorflow
from helpers.threads import use_threads
use_threads({threads})
from helpers.data import load_mnist
from helpers.experiments.cv import cross_validate_mnist, data_fingerprint
settings = json.loads(sys.argv[1])
x, y = load_mnist("train", subset=settings["subset"], seed=settings["seed"])
table = cross_validate_mnist(
    {methods}, folds=settings["folds"], epochs=1, batch_size=settings["batch_size"],
    subset=settings["subset"], seed=settings["seed"], first_folds=1, verbose=0)
print(json.dumps({{"data_sha256": data_fingerprint(x, y),
                  "rows": table.to_dict(orient="records")}}))
"""


@pytest.mark.pinned
def test_fold_0_epoch_1_reproduces_the_committed_run_exactly():
    settings = FULL_SCALE.settings()
    result = subprocess.run(
        [sys.executable, "-c", RETRAIN.format(threads=THREADS, methods=list(METHODS)),
         json.dumps(settings)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    retrained = json.loads(result.stdout.splitlines()[-1])
    assert retrained["data_sha256"] == settings["data_sha256"], "not the committed run's images"
    differences = []
    for row in retrained["rows"]:
        committed = FULL_SCALE.read_table(f"{row['method']}/fold_00.csv").iloc[0]
        assert (committed["fold"], committed["epoch"]) == (0, 1)
        differences += [f"{row['method']} {key}: retrained {row[key]!r}, committed "
                        f"{float(committed[key])!r}"
                        for key in COMPARED if row[key] != committed[key]]
    assert sorted(row["method"] for row in retrained["rows"]) == sorted(METHODS)
    assert not differences, "\n".join(differences)


@pytest.mark.versionless
def test_readme_names_the_thread_count_of_every_committed_result():
    """The README's table says, for every results folder whose run_info.json records one, the
    thread count that reproduces it; the table and the files agree."""
    block = README.read_text().split("<!-- threads:start -->")[1].split("<!-- threads:end -->")[0]
    in_readme = {folder: int(threads) for folder, threads in
                 re.findall(r"^\| \[(results/[\w-]+)\]\([^)]*\) \| (\d+) \|", block, re.M)}
    recorded = {f"results/{path.parent.name}": info["threads_to_reproduce"]
                for path in sorted((ROOT / "results").glob("*/run_info.json"))
                if "threads_to_reproduce" in (info := json.loads(path.read_text()))}
    assert recorded and in_readme == recorded


@pytest.mark.versionless
def test_a_run_records_the_thread_count_it_took_from_the_environment(monkeypatch):
    """Without a count of its own, TensorFlow sizes its intra-op pool by TF_NUM_INTRAOP_THREADS
    where that is a positive integer (scripts/test.sh and .ci/run set it to each side-by-side
    process's share of the cores), else by the cores: what a run records is that count."""
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert (threads_to_reproduce(0), threads_to_reproduce(4)) == (3, 4)
    for unusable in ("0", "", "two", "-1"):
        monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", unusable)
        assert threads_to_reproduce(0) == len(os.sched_getaffinity(0))
