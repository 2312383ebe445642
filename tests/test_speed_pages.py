"""Speed numbers a reader sees (issue #19, item 5): notebook 05_speed shows the committed benchmark
files' numbers as they are now, labels its live run, and its prose claims about speed cite a
committed file and agree with it; the committed tables record the machine's load; no stored
output or committed table shows a utilization above 100%."""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from helpers.tooling import profiling, speed
from helpers.tooling.notebook_index import notebook_paths

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "results" / "benchmarks"
NOTEBOOK = ROOT / "notebooks" / "05_speed.ipynb"
SPEED_WORDS = re.compile(r"\b(faster|slower|fast(est)?|slow|as fast|same speed|keeps? pace|"
                         r"several times|throughput)\b", re.IGNORECASE)
CITATION = re.compile(r"results/benchmarks/[\w.]+\.(?:csv|log)")

pytestmark = pytest.mark.versionless


def committed(name: str) -> pd.DataFrame:
    return pd.read_csv(BENCHMARKS / name)


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def cell_output(notebook, cell_id: str) -> str:
    cell = next(c for c in notebook.cells if c.get("id") == cell_id)
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def prose_paragraphs(markdown: str) -> list[str]:
    """Paragraphs of a markdown text, headings and badge lines left out."""
    return [p for p in re.split(r"\n\s*\n", markdown)
            if p.strip() and not p.lstrip().startswith(("#", "[![Open"))]


# --- the committed tables ---------------------------------------------------------------------

TABLES = sorted(BENCHMARKS.glob("*.csv"))


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.name)
def test_committed_tables_record_the_load(path):
    table = pd.read_csv(path)
    assert {"load_average_start", "load_average_end", "under_load"} <= set(table), path.name
    loads = table[["load_average_start", "load_average_end"]].max(axis=1)
    known = loads.notna()  # runs from before the load was recorded: NaN, labelled by their log
    assert (table.loc[known, "under_load"] == (loads[known] > speed.LOAD_LIMIT)).all()
    if not known.all():
        log = path.with_name(path.name.split("_ops")[0].split("_paired")[0]
                             .removesuffix(".csv") + ".log")
        assert "predates load recording" in log.read_text(), log.name


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.name)
def test_no_committed_utilization_above_100_percent(path):
    table = pd.read_csv(path)
    for column in [c for c in table if c.startswith("utilization")]:
        values = table[column]
        assert (values.isna() | (values <= 100)).all(), (path.name, column)
        assert values[table["under_load"]].isna().all(), (path.name, column)


@pytest.mark.parametrize("path", notebook_paths(ROOT), ids=lambda p: p.name)
def test_no_stored_output_shows_a_utilization_above_100_percent(path):
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") or output.get("data", {}).get("text/plain", "")
            if re.search(r"peak|utiliz|matmul", text, re.IGNORECASE):
                above = [float(v) for v in re.findall(r"(\d+(?:\.\d+)?)\s*%", text)
                         if float(v) > 100]
                assert not above, f"{path.name} cell {cell.get('id')}: {above}"


# --- notebook 05_speed shows the committed numbers --------------------------------------------

def test_committed_throughput_table_and_verdicts_are_the_files(notebook):
    shown = cell_output(notebook, "speed-07")
    throughput = committed("throughput.csv")
    assert speed.format_table(throughput) in shown
    for method in throughput["method"]:
        if method != speed.REFERENCE:
            assert speed.verdict(throughput, method) in shown


def test_fastest_loop_table_is_the_file(notebook):
    shown = cell_output(notebook, "speed-15")
    fastest = committed("throughput_fastest.csv")
    assert speed.format_table(fastest) in shown
    assert speed.verdict(fastest, "matched_bf16_spe", "fit_bf16_spe") in shown
    assert {"fit_auto", "fit_bf16_spe", "matched_bf16_spe"} <= set(fastest["method"])
    accuracy = committed("bf16_accuracy_paired.csv").set_index("column").loc["val_accuracy"]
    assert f"{accuracy['mean_difference']:+.4f}" in shown


def test_idle_shares_are_the_op_profile_files(notebook):
    profile = committed("op_profile.csv")
    idle = profile[profile["category"] == profiling.IDLE].set_index("method")["share_of_wall"]
    table, summary = cell_output(notebook, "speed-11"), cell_output(notebook, "speed-21")
    assert speed.machine_state(profile) in table
    for method, share in idle.items():
        assert re.search(rf"^{method}\b.* {100 * share:.1f}%$", table, re.MULTILINE), method
        assert f"{100 * share:.1f}%" in summary


def test_live_run_is_labelled_as_this_run(notebook):
    shown = cell_output(notebook, "speed-17")
    steps = int(re.search(r"THIS RUN \((\d+) steps an epoch", shown).group(1))
    assert steps >= speed.MIN_STEPS_FOR_PEAK  # stored from a default run
    assert re.search(r"^measured (UNDER LOAD|on an idle machine) \(load average", shown,
                     re.MULTILINE)


# --- its prose --------------------------------------------------------------------------------

def test_every_speed_claim_in_the_prose_cites_a_committed_file(notebook):
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        for paragraph in prose_paragraphs(cell.source):
            if SPEED_WORDS.search(paragraph):
                cited = CITATION.findall(paragraph)
                assert cited, f"cell {cell.id} claims speed without a committed file: {paragraph}"
                for citation in cited:
                    assert (ROOT / citation).is_file(), citation
            assert not re.search(r"\d\s*[x×]\b|\d%", paragraph), (
                f"cell {cell.id}: numbers belong in cell outputs, computed from the files")


def test_the_opening_claims_agree_with_the_committed_files(notebook):
    opening = notebook.cells[0].source
    throughput = committed("throughput.csv").set_index("method")
    assert "several times slower" in opening
    assert throughput.loc["naive_eager", "ratio_to_fit_auto"] < 0.5
    assert "about as fast as\n`fit()`" in opening or "about as fast as `fit()`" in opening
    assert speed.compared_with(committed("throughput.csv"), "matched_graph") == "about as fast as"
    profile = committed("op_profile.csv")
    idle = profile[profile["category"] == profiling.IDLE].set_index("method")["share_of_wall"]
    assert "same share of each step" in opening
    assert math.isclose(idle["fit_auto"], idle["matched_graph"], abs_tol=0.02)
    assert "cuts that idle time in both" in opening
    assert idle["fit_spe"] < idle["fit_auto"] and idle["matched_spe"] < idle["matched_graph"]
    fastest = committed("throughput_fastest.csv")
    sentence = next(s for s in re.split(r"(?<=\.)\s", " ".join(opening.split()))
                    if "throughput_fastest.csv" in s)
    if fastest["under_load"].any():
        assert "under load" in sentence
    else:  # an idle run: the sentence must say what it measured
        assert speed.compared_with(fastest, "matched_bf16_spe", "fit_bf16_spe") in sentence


def test_notebook_ends_with_the_first_appendix(notebook):
    last = [c for c in notebook.cells if c.cell_type == "markdown"][-1].source
    assert "(A1_fit_options.ipynb)" in last
