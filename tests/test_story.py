"""The notebooks tell one story (issue #19): a short main sequence, then appendices marked as
such; the main sequence's prose within its word budget; and, at the quick defaults, notebook
02's stored run shows what the project is about -- the article's loop overfits, fit does not, and
the paired test separates them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from helpers.experiments.params import QUICK_CV
from helpers.tooling.notebook_index import is_appendix, notebook_paths

pytestmark = pytest.mark.versionless

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebook_paths(ROOT)
MAIN = [path for path in NOTEBOOKS if not is_appendix(path)]
APPENDICES = [path for path in NOTEBOOKS if is_appendix(path)]
WORDS_PER_NOTEBOOK = 900
WORDS_MAIN_SEQUENCE = 6000
CROSS_VALIDATING = ["01_fit_baseline.ipynb", "02_article_loop_vs_fit.ipynb",
                    "04_which_difference.ipynb"]


def prose_words(path: Path) -> int:
    """Words of prose in the notebook's markdown cells: fenced code, HTML comments (the
    generated blocks' markers) and the badge line left out, links counted by their text."""
    words = 0
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"^```.*?^```", " ", cell.source, flags=re.MULTILINE | re.DOTALL)
        text = re.sub(r"<!--.*?-->", " ", text, flags=re.DOTALL)
        text = "\n".join(line for line in text.splitlines()
                         if not line.lstrip().startswith("[![Open In Colab]"))
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
        words += sum(1 for word in text.split() if re.search(r"\w", word))
    return words


def title(path: Path) -> str:
    first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    return next(line for line in first.source.splitlines() if line.startswith("# "))[2:]


def test_prose_words_counts_prose_only(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# 01 · A title\n[![Open In Colab](x)](y) [![Binder](z)](w)"
                                      "\n\nSee [the figure](a/b.png).\n<!-- marker -->"),
        nbformat.v4.new_markdown_cell("```bash\npip install x y z\n```\nTwo -- words."),
        nbformat.v4.new_code_cell("not = counted + at_all"),
    ]
    path = tmp_path / "words.ipynb"
    nbformat.write(notebook, path)
    assert prose_words(path) == 3 + 3 + 2  # "01 A title", "See the figure.", "Two words."


def test_main_sequence_then_appendices():
    assert 4 <= len(MAIN) <= 6, [path.name for path in MAIN]
    assert [path.name[:2] for path in MAIN] == [f"{i:02d}" for i in range(1, len(MAIN) + 1)]
    assert [path.name[:2] for path in APPENDICES] == [f"A{i}" for i in
                                                      range(1, len(APPENDICES) + 1)]


@pytest.mark.parametrize("path", MAIN, ids=lambda p: p.name)
def test_each_main_notebook_is_short(path):
    words = prose_words(path)
    assert words <= WORDS_PER_NOTEBOOK, f"{path.name}: {words} words of prose"


def test_the_main_sequence_is_short():
    words = {path.name: prose_words(path) for path in MAIN}
    assert sum(words.values()) <= WORDS_MAIN_SEQUENCE, words


def test_titles_mark_the_appendices():
    for path in MAIN:
        assert re.match(rf"{path.name[:2]} · ", title(path)), (path.name, title(path))
    for path in APPENDICES:
        assert re.match(rf"Appendix {path.name[:2]} · ", title(path)), (path.name, title(path))


def test_readme_index_lists_the_appendices_apart():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = readme.split("<!-- notebook-index:start -->")[1].split("<!-- notebook-index:end -->")[0]
    main_part, appendix_part = index.split("**Appendices**")
    for path in MAIN:
        assert f"(notebooks/{path.name})" in main_part and path.name not in appendix_part
    for path in APPENDICES:
        assert f"| {path.name[:2]} | [" in appendix_part and path.name not in main_part


@pytest.mark.parametrize("name", CROSS_VALIDATING)
def test_cross_validating_notebooks_share_the_quick_preset(name):
    """01, 02 and 04 read back each other's folds only if their defaults are the same."""
    cells = nbformat.read(ROOT / "notebooks" / name, as_version=4).cells
    parameters = next(c for c in cells if "parameters" in c.metadata.get("tags", []))
    defaults = {statement.target.id: ast.literal_eval(statement.value)
                for statement in ast.parse(parameters.source).body}
    assert {key: defaults[key] for key in QUICK_CV} == QUICK_CV


def test_readme_and_02_open_with_the_answer_generated_from_the_committed_results():
    """The plain answer opens the README (after its title) and notebook 02 (after its first
    sentence); it, the statistics after it and the held-out scores are current."""
    from helpers.tooling import report

    assert report.main(["results/full-scale", "--ablation", "results/ablation", "--held-out",
                        "results/held-out-test", "--check"]) == 0, (
        "stale: python -m helpers.tooling.report results/full-scale --ablation results/ablation "
        "--held-out results/held-out-test")
    start, end = report.PLAIN_MARKERS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.split("\n\n", 2)[1].startswith(start)
    plain = readme.split(start)[1].split(end)[0]
    assert "without `training=True`, so Dropout never ran" in plain
    first_cell = nbformat.read(ROOT / "notebooks/02_article_loop_vs_fit.ipynb",
                               as_version=4).cells[0].source
    assert f"{start}{plain}{end}" in first_cell
    for text in (readme, first_cell):  # the figure right after the answer
        after = text.split(end, 1)[1][:400]
        assert "results/full-scale/curves.png)" in after
    assert "| article's tape loop |" in readme.split(report.HELD_OUT_MARKERS[0])[1]


def _stored_text(name: str) -> str:
    cells = nbformat.read(ROOT / "notebooks" / name, as_version=4).cells
    return "".join(output.get("text", "") for cell in cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("output_type") == "stream")


def test_notebook_02_shows_the_article_loop_overfitting_and_fit_not():
    """Read from 02's stored outputs (a default run, tests/test_notebooks.py checks): the
    article's loop's mean validation loss is lowest before the last epoch and has risen by the
    end, fit's is lowest at the last epoch, and the paired sign-flip tests of the final val loss
    and of its rise after the best epoch give p < 0.05 (accuracy is reported, not required)."""
    text = _stored_text("02_article_loop_vs_fit.ipynb")
    curves = dict(re.findall(r"^(model\.fit\(\)|article's tape loop): mean val loss lowest at "
                             r"(epoch \d+ of \d+, then rises by [\d.]+)", text, re.MULTILINE))
    assert set(curves) == {"model.fit()", "article's tape loop"}, text[:2000]
    lowest, last, rise = re.match(r"epoch (\d+) of (\d+), then rises by ([\d.]+)",
                                  curves["article's tape loop"]).groups()
    assert int(lowest) < int(last) and float(rise) > 0
    lowest, last, rise = re.match(r"epoch (\d+) of (\d+), then rises by ([\d.]+)",
                                  curves["model.fit()"]).groups()
    assert int(lowest) == int(last) == QUICK_CV["epochs"] and float(rise) == 0
    verdicts = re.findall(r"^article's tape loop vs model\.fit\(\), (.+?): .*sign-flip p = "
                          r"([\d.]+) over (\d+) folds", text, re.MULTILINE)
    measured = {what: float(p) for what, p, folds in verdicts if int(folds) == QUICK_CV["folds"]}
    assert set(measured) == {"final val loss", "final val accuracy",
                             "val loss rise after the best epoch"}, verdicts
    assert measured["final val loss"] < 0.05, measured
    assert measured["val loss rise after the best epoch"] < 0.05, measured
    assert ("The article's loop overfits: True · fit overfits: False · the paired tests of the "
            "final val loss and of its rise separate them (p < 0.05): True") in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_hold_no_progress_bar_debris(path):
    """No animated progress bar stored as chunks (bar characters, backspaces, carriage returns)
    and no line per fold read back from an earlier run."""
    text = _stored_text(path.name)
    assert not re.search("[━\b\r]", text), f"{path.name}: progress-bar debris in its outputs"
    assert text.count("finished earlier, read") <= 1, f"{path.name}: a read-back line per fold"
