"""Keep the README's notebook table, every notebook's Colab/Binder badges and the install block
of every notebook's Setup cell in step with `REPOSITORY`.

    python -m helpers.tooling.notebook_index          # rewrite index, badges and install blocks
    python -m helpers.tooling.notebook_index --check  # exit 1 listing what is stale; no writes

The notebooks are the main sequence, ``notebooks/01_*.ipynb``, ``02_*``, ... read in order, then the
appendices, ``notebooks/A1_*.ipynb``, ``A2_*``, ... (`notebook_paths`: that order). For each, the
title is the ``# `` heading of the notebook's first markdown cell (an appendix's starts with
"Appendix A1 · ") and the description is the first sentence of the paragraph after it. The
README's index -- a table of the main sequence, then one of the appendices under "Appendices" --
goes between ``<!-- notebook-index:start -->`` and ``<!-- notebook-index:end -->``;
each notebook gets one badge line (starting with ``[![Open In Colab]``) right under its title.
The first code cell (the Setup cell) gets the block `install_block` between `INSTALL_START` and
`INSTALL_END`, replacing the previous block or the older two-line Colab install
(``if "google.colab" in sys.modules:`` + ``%pip install ...``).
Run it after adding, renaming or retitling a notebook; tests/test_readme.py runs ``--check``.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import nbformat

# The GitHub repository (owner/name) that the badges open and the Setup cells install from.
# A fork changes this one line and runs `python -m helpers.tooling.notebook_index`.
REPOSITORY = "tape-vs-fit/tape-vs-fit"
BRANCH = "main"

ROOT = Path(__file__).resolve().parent.parent.parent
# The main sequence (01_fit_baseline.ipynb, ...), then the appendices (A1_fit_options.ipynb, ...).
MAIN_GLOB = "[0-9][0-9]_*.ipynb"
APPENDIX_GLOB = "A[0-9]*_*.ipynb"
START = "<!-- notebook-index:start -->"
END = "<!-- notebook-index:end -->"
BADGE_PREFIX = "[![Open In Colab]"
COLAB_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BINDER_IMAGE = "https://mybinder.org/badge_logo.svg"
MAX_DESCRIPTION = 160  # characters; longer first sentences are cut at a word boundary


class NotebookIndexError(RuntimeError):
    """A notebook or the README lacks what the index needs (a title, the markers)."""


def colab_url(name: str, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    return f"https://colab.research.google.com/github/{repository}/blob/{branch}/notebooks/{name}"


def binder_url(name: str, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    labpath = quote(f"notebooks/{name}", safe="")
    return f"https://mybinder.org/v2/gh/{repository}/{branch}?labpath={labpath}"


def colab_badge(name: str) -> str:
    return f"[![Open In Colab]({COLAB_IMAGE})]({colab_url(name)})"


def binder_badge(name: str) -> str:
    return f"[![Binder]({BINDER_IMAGE})]({binder_url(name)})"


def badge_line(name: str) -> str:
    return f"{colab_badge(name)} {binder_badge(name)}"


@dataclass
class NotebookInfo:
    path: Path
    number: str
    title: str
    description: str

    @property
    def name(self) -> str:
        return self.path.name


def notebooks_in(folder: Path) -> list[Path]:
    """The folder's main-sequence notebooks in order, then its appendices in order."""
    folder = Path(folder)
    return sorted(folder.glob(MAIN_GLOB)) + sorted(folder.glob(APPENDIX_GLOB))


def notebook_paths(root: Path = ROOT) -> list[Path]:
    return notebooks_in(Path(root) / "notebooks")


def is_appendix(path: Path) -> bool:
    return Path(path).name.startswith("A")


def _first_markdown_cell(notebook, path: Path):
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            return cell
    raise NotebookIndexError(f"{path}: no markdown cell; the first must start with a '# ' title")


def _title_index(lines: list[str], path: Path) -> int:
    for index, line in enumerate(lines):
        if line.startswith("# "):
            return index
    raise NotebookIndexError(f"{path}: the first markdown cell has no '# ' title line")


def _plain(text: str) -> str:
    """One line, links reduced to their text, table pipes escaped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = " ".join(text.split())
    return text.replace("|", r"\|")


def _first_sentence(paragraph: str) -> str:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`*_])", paragraph, maxsplit=1)
    sentence = parts[0]
    if len(sentence) > MAX_DESCRIPTION:
        sentence = sentence[:MAX_DESCRIPTION].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    return sentence


def _description(lines: list[str]) -> str:
    """First sentence of the first paragraph after the title (badges and headings skipped)."""
    paragraph: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(BADGE_PREFIX) or stripped.startswith("#"):
            if paragraph:
                break
            continue
        if not stripped:
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    return _first_sentence(_plain(" ".join(paragraph))) if paragraph else ""


def read_info(path: Path) -> NotebookInfo:
    notebook = nbformat.read(path, as_version=4)
    lines = _first_markdown_cell(notebook, path).source.splitlines()
    title_at = _title_index(lines, path)
    number = path.stem.split("_", 1)[0]  # "01", or "A1" for an appendix
    title = lines[title_at][2:].strip()
    # "01 · The fit() baseline" or "Appendix A1 · Fit's options" -> the title alone: the table
    # has a # column
    title = re.sub(rf"^(Appendix )?0*{number.lstrip('0')}\s*[·.:\-–—]\s*", "", title) or title
    return NotebookInfo(
        path=path,
        number=number,
        title=_plain(title),
        description=_description(lines[title_at + 1 :]),
    )


def _table(infos: list[NotebookInfo]) -> list[str]:
    rows = [
        "| # | Notebook | What it shows | Colab | Binder |",
        "|---|---|---|---|---|",
    ]
    for info in infos:
        rows.append(
            f"| {info.number} | [{info.title}](notebooks/{info.name}) | {info.description} "
            f"| {colab_badge(info.name)} | {binder_badge(info.name)} |"
        )
    return rows


def render_table(infos: list[NotebookInfo]) -> str:
    """The main sequence's table, then the appendices' under their own heading."""
    if not infos:
        return "_No notebooks in notebooks/ yet._"
    main = [info for info in infos if not is_appendix(info.path)]
    appendices = [info for info in infos if is_appendix(info.path)]
    rows = _table(main) if main else []
    if appendices:
        rows += ([""] if rows else []) + [
            "**Appendices**, read in any order after the main sequence:", ""] + _table(appendices)
    return "\n".join(rows)


def updated_readme(text: str, infos: list[NotebookInfo], path: Path) -> str:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise NotebookIndexError(f"{path}: needs exactly one '{START}' followed by one '{END}'")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{render_table(infos)}\n{END}{tail}"


def updated_cell_source(source: str, name: str, path: Path) -> str:
    """The first markdown cell's source with exactly one, current badge line."""
    lines = source.splitlines()
    title_at = _title_index(lines, path)
    line = badge_line(name)
    badge_at = [i for i, text in enumerate(lines) if text.lstrip().startswith(BADGE_PREFIX)]
    if badge_at:
        lines[badge_at[0]] = line
        for extra in reversed(badge_at[1:]):
            del lines[extra]
    else:
        following = lines[title_at + 1 :]
        insert = [line] + ([""] if following and following[0].strip() else [])
        lines[title_at + 1 : title_at + 1] = insert
    return "\n".join(lines)


def plan(root: Path = ROOT) -> dict[Path, str]:
    """Files whose content would change, mapped to their new content (README.md as text,
    notebooks as the updated first-markdown-cell source)."""
    root = Path(root)
    paths = notebook_paths(root)
    infos = [read_info(path) for path in paths]
    changes: dict[Path, str] = {}

    readme = root / "README.md"
    if not readme.is_file():
        raise NotebookIndexError(f"{readme} does not exist")
    text = readme.read_text(encoding="utf-8")
    new_text = updated_readme(text, infos, readme)
    if new_text != text:
        changes[readme] = new_text

    for path in paths:
        cell = _first_markdown_cell(nbformat.read(path, as_version=4), path)
        new_source = updated_cell_source(cell.source, path.name, path)
        if new_source != cell.source:
            changes[path] = new_source
    return changes


def apply(changes: dict[Path, str]) -> None:
    for path, content in changes.items():
        if path.suffix == ".ipynb":
            notebook = nbformat.read(path, as_version=4)
            _first_markdown_cell(notebook, path).source = content
            nbformat.validate(notebook)
            nbformat.write(notebook, path)
        else:
            path.write_text(content, encoding="utf-8")


# The Setup cells' install block (kept apart from the badge code above). Only `if` and `try`
# statements, so that the imports after it still count as the top of the cell (ruff E402).

INSTALL_START = "# --- install (generated by `python -m helpers.tooling.notebook_index`) ---"
INSTALL_END = "# --- end install ---"
# The Setup cell's older, hand-written Colab install: a Colab check followed by a %pip line.
OLD_COLAB_INSTALL = re.compile(
    r'^if "google\.colab" in sys\.modules:.*\n[ \t]+%pip install [^\n]*(\n|$)', re.MULTILINE
)
INSTALL_TEMPLATE = """\
{start}
if "google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ:  # hosted notebook
    %pip install -q --no-deps "{source}"
try:
    from helpers.notebook.environment import check_environment
except ModuleNotFoundError:  # e.g. this notebook downloaded alone: say what to install
    raise ModuleNotFoundError(
        "This notebook needs its helpers package (it brings TensorFlow, Keras, ...): "
        'pip install "{source}"') from None
else:  # hosted: installs what is missing; never replaces an installed TensorFlow or Keras
    check_environment()
{end}"""


def install_source(repository: str = REPOSITORY) -> str:
    """The pip requirement that installs the package (`tape-vs-fit`, which brings `helpers`)
    from the repository."""
    return f"tape-vs-fit @ git+https://github.com/{repository}"


def install_block(source: str | None = None, repository: str = REPOSITORY) -> str:
    """The Setup cell's install block; `source` replaces the GitHub requirement (tests pass a
    local path)."""
    return INSTALL_TEMPLATE.format(
        start=INSTALL_START, end=INSTALL_END, source=source or install_source(repository)
    )


def setup_cell(notebook):
    """The first code cell (every notebook's Setup cell), or None."""
    return next((cell for cell in notebook.cells if cell.cell_type == "code"), None)


def updated_setup_source(source: str, path: Path) -> str:
    """The Setup cell's source with the current install block, which replaces the block between
    the markers or else the older two-line Colab install; a cell with neither is left as it is."""
    block = install_block()
    if source.count(INSTALL_START) == 1 and source.count(INSTALL_END) == 1:
        head, rest = source.split(INSTALL_START)
        _, tail = rest.split(INSTALL_END)
        return f"{head}{block}{tail}"
    if len(OLD_COLAB_INSTALL.findall(source)) == 1:
        return OLD_COLAB_INSTALL.sub(lambda match: block + match.group(1), source)
    if INSTALL_START in source or INSTALL_END in source:
        raise NotebookIndexError(
            f"{path}: the Setup cell needs exactly one '{INSTALL_START}' and one '{INSTALL_END}'")
    return source  # no install block to keep current (tests/test_repository.py requires one)


def plan_setup_cells(root: Path = ROOT) -> dict[Path, str]:
    """Notebooks whose Setup cell would change, mapped to the cell's new source."""
    changes = {}
    for path in notebook_paths(Path(root)):
        cell = setup_cell(nbformat.read(path, as_version=4))
        new_source = cell and updated_setup_source(cell.source, path)
        if cell and new_source != cell.source:
            changes[path] = new_source
    return changes


def apply_setup_cells(changes: dict[Path, str]) -> None:
    for path, source in changes.items():
        notebook = nbformat.read(path, as_version=4)
        setup_cell(notebook).source = source
        nbformat.validate(notebook)
        nbformat.write(notebook, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.tooling.notebook_index",
        description="Rewrite README.md's notebook index and each notebook's Colab/Binder badges.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 listing what is out of date"
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="repository root (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        changes = plan(root)
        setup_changes = plan_setup_cells(root)
    except NotebookIndexError as error:
        print(f"notebook_index: {error}", file=sys.stderr)
        return 1
    names = [str(path.relative_to(root)) for path in changes]
    setup_names = [str(path.relative_to(root)) for path in setup_changes]
    if args.check:
        if changes or setup_changes:
            print("notebook_index: out of date (run `python -m helpers.tooling.notebook_index`):")
            for name in names:
                what = "badge line" if name.endswith(".ipynb") else "notebook index"
                print(f"  {name} ({what})")
            for name in setup_names:
                print(f"  {name} (Setup cell's install block)")
            return 1
        print(f"notebook_index: README.md and {len(notebook_paths(root))} notebooks are up to date")
        return 0
    apply(changes)
    apply_setup_cells(setup_changes)
    for name in names + setup_names:
        print(f"notebook_index: updated {name}")
    if not changes and not setup_changes:
        print("notebook_index: nothing to update")
    return 0


if __name__ == "__main__":
    sys.exit(main())
