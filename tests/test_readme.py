"""README.md and the notebooks' badges: links that work, an index that is up to date, and the
two Quick start commands. Tests that write work on temporary copies."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

from helpers.tooling import notebook_index
from helpers.tooling.notebook_index import BRANCH, END, REPOSITORY, START

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
QUICK_START = ["bash scripts/run_notebooks.sh", "bash scripts/test.sh"]

pytestmark = pytest.mark.versionless

COLAB = re.compile(
    r"https://colab\.research\.google\.com/github/(?P<repo>[^/\s)]+/[^/\s)]+)/blob/"
    r"(?P<branch>[^/\s)]+)/(?P<path>[^\s)?#]+)"
)
BINDER = re.compile(
    r"https://mybinder\.org/v2/gh/(?P<repo>[^/\s)]+/[^/\s)]+)/(?P<branch>[^?\s)]+)"
    r"(?:\?labpath=(?P<path>[^\s)&#]+))?"
)


def badge_links(text: str) -> list[tuple[str, str, str]]:
    """(repository, branch, notebook path) of every Colab and Binder link in the text."""
    links = [(m["repo"], m["branch"], m["path"]) for m in COLAB.finditer(text)]
    links += [(m["repo"], m["branch"], unquote(m["path"] or "")) for m in BINDER.finditer(text)]
    return links


def markdown_of(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")


def real_notebooks() -> list[Path]:
    return notebook_index.notebook_paths(ROOT)


def assert_links_valid(links, where: str) -> None:
    for repo, branch, path in links:
        assert repo == REPOSITORY, f"{where}: badge points at {repo}, not {REPOSITORY}"
        assert branch == BRANCH, f"{where}: badge points at branch {branch}, not {BRANCH}"
        assert path.startswith("notebooks/") and path.endswith(".ipynb"), (
            f"{where}: badge opens {path!r}, not a notebook in notebooks/"
        )
        assert (ROOT / path).is_file(), f"{where}: badge opens {path}, which does not exist"


def test_readme_badges_point_at_existing_notebooks_of_the_configured_repository():
    links = badge_links(README.read_text(encoding="utf-8"))
    assert_links_valid(links, "README.md")
    # Every notebook has both badges in the README.
    for path in real_notebooks():
        opened = [link for link in links if link[2] == f"notebooks/{path.name}"]
        assert len(opened) == 2, f"README.md should have a Colab and a Binder badge for {path.name}"


@pytest.mark.parametrize("path", real_notebooks(), ids=lambda path: path.name)
def test_notebook_badges_point_at_itself_in_the_configured_repository(path):
    links = badge_links(markdown_of(path))
    assert links, (f"{path.name} has no Colab/Binder badges; "
                   "run `python -m helpers.tooling.notebook_index`")
    assert_links_valid(links, str(path.relative_to(ROOT)))
    assert {link[2] for link in links} == {f"notebooks/{path.name}"}, (
        f"{path.name}: its badges should open the notebook itself"
    )


def test_index_and_badges_are_up_to_date():
    result = subprocess.run(
        [sys.executable, "-m", "helpers.tooling.notebook_index", "--check"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, (
        "README.md's notebook index or a notebook's badges are stale; run "
        f"`python -m helpers.tooling.notebook_index`.\n{result.stdout}{result.stderr}"
    )


def test_readme_quick_start_is_exactly_the_two_commands():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    quick = [block for block in blocks if "scripts/run_notebooks.sh" in block]
    assert len(quick) == 1, "README.md should have one fenced block with the Quick start commands"
    lines = [line.strip() for line in quick[0].splitlines() if line.strip()]
    assert lines == QUICK_START
    for command in QUICK_START:
        assert (ROOT / command.split()[1]).is_file(), f"{command}: script missing"


def test_readme_has_one_index_block_and_one_results_block():
    text = README.read_text(encoding="utf-8")
    for marker in (START, END, "<!-- results:start -->", "<!-- results:end -->"):
        assert text.count(marker) == 1, f"README.md should contain {marker} exactly once"


# The generator itself, on throwaway copies in a temporary folder.


def make_notebook(path: Path, first_markdown: str, extra_code: str = "x = 1") -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell(first_markdown),
        nbformat.v4.new_code_cell(extra_code),
        nbformat.v4.new_markdown_cell("## Later\n\nNot the description."),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "README.md").write_text(
        f"# Project\n\nIntro.\n\n{START}\nstale table\n{END}\n\n## Quick start\n",
        encoding="utf-8",
    )
    make_notebook(
        tmp_path / "notebooks" / "01_first.ipynb",
        "# Baseline with fit()\n\nTrains the article's CNN with `model.fit()`. Then it plots.\n",
    )
    make_notebook(
        tmp_path / "notebooks" / "02_second.ipynb",
        "Intro line before the title.\n# The naive loop | tape\n"
        "[![Open In Colab](https://x/badge.svg)](https://colab.research.google.com/github/"
        "someone/else/blob/dev/notebooks/old.ipynb)\n\n"
        "A [linked](https://example.org) description that goes on\nover two lines. Second.",
    )
    (tmp_path / "notebooks" / "helper_not_indexed.ipynb").write_text("{}", encoding="utf-8")
    return tmp_path


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m helpers.tooling.notebook_index --root ROOT ARGS`, run in this process
    (quicker)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        returncode = notebook_index.main(["--root", str(root), *args])
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


def snapshot(root: Path) -> dict[str, bytes]:
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return {str(path.relative_to(root)): path.read_bytes() for path in files}


def test_check_reports_stale_files_without_writing(repo):
    before = snapshot(repo)
    result = run_cli(repo, "--check")
    assert result.returncode == 1
    for name in ("README.md", "notebooks/01_first.ipynb", "notebooks/02_second.ipynb"):
        assert name in result.stdout
    assert snapshot(repo) == before


def test_generator_writes_table_and_badges_then_check_passes(repo):
    assert run_cli(repo).returncode == 0
    check = run_cli(repo, "--check")
    assert check.returncode == 0, check.stdout + check.stderr

    readme = (repo / "README.md").read_text(encoding="utf-8")
    block = readme.split(START)[1].split(END)[0]
    assert "stale table" not in block
    assert readme.startswith("# Project\n\nIntro.\n\n") and readme.endswith("\n\n## Quick start\n")
    rows = [line for line in block.splitlines() if line.startswith("| 0")]
    assert rows[0].startswith(
        "| 01 | [Baseline with fit()](notebooks/01_first.ipynb) "
        "| Trains the article's CNN with `model.fit()`. |"
    )
    assert rows[1].startswith(
        r"| 02 | [The naive loop \| tape](notebooks/02_second.ipynb) "
        "| A linked description that goes on over two lines. |"
    )
    assert len(rows) == 2  # helper_not_indexed.ipynb is neither 01_*.ipynb nor A1_*.ipynb
    for name in ("01_first.ipynb", "02_second.ipynb"):
        assert notebook_index.colab_url(name) in block
        assert notebook_index.binder_url(name) in block
    assert notebook_index.binder_url("01_first.ipynb").endswith(
        f"/{BRANCH}?labpath=notebooks%2F01_first.ipynb"
    )

    for name, title in (("01_first.ipynb", "# Baseline with fit()"),
                        ("02_second.ipynb", "# The naive loop | tape")):
        notebook = nbformat.read(repo / "notebooks" / name, as_version=4)
        nbformat.validate(notebook)
        lines = notebook.cells[0].source.splitlines()
        at = lines.index(title)
        assert lines[at + 1] == notebook_index.badge_line(name)
        assert sum(line.startswith("[![Open In Colab]") for line in lines) == 1
        assert notebook.cells[1].source == "x = 1"
    first = nbformat.read(repo / "notebooks" / "01_first.ipynb", as_version=4)
    assert first.cells[0].source.splitlines()[2] == ""  # badge is its own paragraph
    second = nbformat.read(repo / "notebooks" / "02_second.ipynb", as_version=4).cells[0].source
    assert "someone/else" not in second

    # A second run changes nothing.
    before = snapshot(repo)
    assert "nothing to update" in run_cli(repo).stdout
    assert snapshot(repo) == before


def test_new_notebook_makes_check_fail(repo):
    assert run_cli(repo).returncode == 0
    make_notebook(repo / "notebooks" / "03_third.ipynb", "# Third\n\nMore.")
    result = run_cli(repo, "--check")
    assert result.returncode == 1
    assert "README.md" in result.stdout and "03_third.ipynb" in result.stdout


def test_notebook_without_title_is_an_error(repo):
    make_notebook(repo / "notebooks" / "03_untitled.ipynb", "No heading here.")
    result = run_cli(repo, "--check")
    assert result.returncode == 1
    assert "03_untitled.ipynb" in result.stderr and "'# ' title" in result.stderr


def test_missing_markers_are_an_error(repo):
    (repo / "README.md").write_text("# Project\n", encoding="utf-8")
    result = run_cli(repo)
    assert result.returncode == 1
    assert START in result.stderr


def test_no_notebooks_gives_a_placeholder(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "README.md").write_text(f"{START}\n{END}\n", encoding="utf-8")
    assert run_cli(tmp_path).returncode == 0
    assert "No notebooks" in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_readme_quotes_the_recorded_quick_run():
    """The README's quick-run time is results/quick-run's (scripts/record_quick_run.py), with its
    date and conditions, and the main sequence is within the 5 minutes its quick preset is held
    to (the appendices, A5's JAX cross-validation above all, take longer)."""
    import json

    info = json.loads((ROOT / "results/quick-run/run_info.json").read_text())
    readme = " ".join(README.read_text().split())  # wrapped lines joined
    minutes, main_minutes = info["wall_seconds"] / 60, info["main_sequence_seconds"] / 60
    assert (f"the main sequence's {info['main_sequence_notebooks']} notebooks in "
            f"{main_minutes:.1f} minutes and all {info['notebooks']} in {minutes:.1f}") in readme
    assert f"on {info['date']}, {info['conditions']}" in readme
    assert info["notebooks"] == len(real_notebooks())
    assert info["main_sequence_notebooks"] == len([p for p in real_notebooks()
                                                   if not p.name.startswith("A")])
    assert main_minutes <= 5, "the main sequence's quick preset must run in 5 minutes or less"


def test_readme_quotes_the_recorded_peak_memory():
    """The README's memory sentence is results/memory's (benchmarks/notebook_memory.py), over
    every notebook, each within Binder's 2 GB."""
    import csv

    with open(ROOT / "results/memory/notebook_memory.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["notebook"] for row in rows) == [p.name for p in real_notebooks()]
    assert all(row["within_binder_2gb"] == "True" for row in rows)
    date = (ROOT / "results/memory/notebook_memory.log").read_text()[:10]
    kernel, total = ([int(row[key]) / 1024 for row in rows]
                     for key in ("kernel_peak_mb", "total_peak_mb"))
    readme = " ".join(README.read_text().split())
    assert (f"kernel peaks at {min(kernel):.1f}–{max(kernel):.1f} GB of memory, "
            f"{min(total):.1f}–{max(total):.1f} GB with papermill") in readme
    assert f"all {len(rows)} notebooks, run on {date}" in readme
