"""Keep the README's notebook table, every notebook's Colab/Binder badges and every notebook's
Setup cell in step with `REPOSITORY` (and the Setup cell with the notebook's Keras gates).

    python -m helpers.tooling.notebook_index          # rewrite index, badges and Setup cells
    python -m helpers.tooling.notebook_index --check  # exit 1 listing what is stale; no writes

The notebooks are the main sequence, ``notebooks/01_*.ipynb``, ``02_*``, ... read in order, then the
appendices, ``notebooks/A1_*.ipynb``, ``A2_*``, ... (`notebook_paths`: that order). For each, the
title is the ``# `` heading of the notebook's first markdown cell (an appendix's starts with
"Appendix A1 · ") and the description is the first sentence of the paragraph after it. The
README's index -- a table of the main sequence, then one of the appendices under "Appendices" --
goes between ``<!-- notebook-index:start -->`` and ``<!-- notebook-index:end -->``;
each notebook gets one badge line (starting with ``[![Open In Colab]``) right under its title.
The first code cell (the Setup cell) becomes `setup_source` for the Keras gates that the
notebook's ``keras_allows`` calls name; an older Setup cell (an install block followed by the
notebook's imports) is split into the new Setup cell and a cell of those imports
(`migrate_old_setup`).
Run it after adding, renaming or retitling a notebook; tests/test_readme.py runs ``--check``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import nbformat

from helpers.experiments.params import refuse, usage_errors
from helpers.notebook.environment import HOSTED_VARIABLES

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


# The Setup cell (kept apart from the badge code above): generated whole, the same for every
# notebook but for the Keras gates its sections use. At most 8 non-blank lines; the work is in
# helpers.notebook.setup.setup_notebook. Colab and Kaggle set HOSTED_VARIABLES in every kernel.

SETUP_TEMPLATE = """\
import importlib.util
import os

if {hosted}:
    %pip install -q --no-deps "{source}"
elif importlib.util.find_spec("helpers") is None:
    raise SystemExit('This notebook needs its helpers package: pip install "{source}"')
from helpers.notebook.setup import setup_notebook

setup_notebook({arguments})"""
SETUP_CALL = "from helpers.notebook.setup import setup_notebook"
# A section that needs a newer Keras: `if keras_allows("strategy", ...):` (helpers.notebook.setup).
KERAS_ALLOWS = re.compile(r"""\bkeras_allows\(\s*["'](\w+)["']""")

# Before the Setup cell was generated whole, it held an install block between these markers (or,
# older still, a Colab check and a %pip line), followed by the notebook's imports.
# `migrate_old_setup` moves those imports to a cell of their own after the new Setup cell.
OLD_INSTALL_START = "# --- install (generated by `python -m helpers.tooling.notebook_index`) ---"
OLD_INSTALL_END = "# --- end install ---"
OLD_COLAB_INSTALL = re.compile(
    r'^if "google\.colab" in sys\.modules:.*\n[ \t]+%pip install [^\n]*(\n|$)', re.MULTILINE
)
# What the new Setup cell does in the old one's place: TensorFlow imported quietly (and the
# `isort: split` that kept that import first), the versions printed.
OLD_SETUP_LINES = re.compile(r"^(import helpers\.notebook\.quiet_tensorflow\b.*|# isort: split)\n?",
                             re.MULTILINE)
OLD_VERSION_PRINT = re.compile(r"__version__|list_physical_devices\(\"GPU\"\)")


def install_source(repository: str = REPOSITORY) -> str:
    """The pip requirement that installs the package (`tape-vs-fit`, which brings `helpers`)
    from the repository."""
    return f"tape-vs-fit @ git+https://github.com/{repository}"


def setup_source(keras_gates=(), source: str | None = None, repository: str = REPOSITORY,
                 options: str = "") -> str:
    """The Setup cell of a notebook whose sections use `keras_gates` (names in
    helpers.compat.KERAS_GATES); `source` replaces the GitHub requirement (tests pass a local
    path); `options` are the notebook's other `setup_notebook` arguments, as written (e.g.
    ``backend="jax"``)."""
    hosted = " or ".join(f'"{name}" in os.environ' for name in HOSTED_VARIABLES)
    gates = f"keras_gates={sorted(keras_gates)!r}".replace("'", '"') if keras_gates else ""
    arguments = ", ".join(part for part in (gates, options) if part)
    return SETUP_TEMPLATE.format(hosted=hosted, source=source or install_source(repository),
                                 arguments=arguments)


def setup_cell(notebook):
    """The first code cell (every notebook's Setup cell), or None."""
    return next((cell for cell in notebook.cells if cell.cell_type == "code"), None)


def keras_gates_used(notebook) -> list[str]:
    """The gates the notebook's `keras_allows` calls name, in name order."""
    return sorted({gate for cell in notebook.cells if cell.cell_type == "code"
                   for gate in KERAS_ALLOWS.findall(cell.source)})


def _is_magic(line: str) -> bool:
    return line.lstrip().startswith(("%", "!"))


def _python_source(source: str) -> str:
    """`source` (a code cell) as Python: each IPython % or ! line becomes a `pass` (an `if`
    holding only a ``%pip`` line stays valid)."""
    return "\n".join(line[:len(line) - len(line.lstrip())] + "pass" if _is_magic(line) else line
                     for line in source.splitlines())


def _python_names(source: str) -> set[str]:
    """The names `source` (a code cell) reads; every word of an IPython % or ! line counts."""
    magics = "\n".join(line for line in source.splitlines() if _is_magic(line))
    return ({node.id for node in ast.walk(ast.parse(_python_source(source)))
             if isinstance(node, ast.Name)}
            | set(re.findall(r"[A-Za-z_]\w*", magics)))


def _imports_of_old_setup(source: str, path: Path) -> str:
    """An old Setup cell's source without its install block, quiet-TensorFlow import and version
    prints: the notebook's imports (and whatever else the cell did)."""
    if source.count(OLD_INSTALL_START) == 1 and source.count(OLD_INSTALL_END) == 1:
        head, rest = source.split(OLD_INSTALL_START)
        source = head + rest.split(OLD_INSTALL_END)[1]
    elif len(OLD_COLAB_INSTALL.findall(source)) == 1:
        source = OLD_COLAB_INSTALL.sub("", source)
    else:
        raise NotebookIndexError(f"{path}: the Setup cell needs exactly one "
                                 f"'{OLD_INSTALL_START}' and one '{OLD_INSTALL_END}'")
    lines = OLD_SETUP_LINES.sub("", source).splitlines()
    for statement in reversed(ast.parse("\n".join(lines)).body):
        segment = "\n".join(lines[statement.lineno - 1:statement.end_lineno])
        if (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)
                and getattr(statement.value.func, "id", None) == "print"
                and OLD_VERSION_PRINT.search(segment)):
            del lines[statement.lineno - 1:statement.end_lineno]
    return "\n".join(lines)


def _without_unused_imports(source: str, used: set[str]) -> str:
    """`source` without the top-level imports of names that `used` (the names the rest of the
    notebook reads) lacks; blank-line runs closed up."""
    lines = source.splitlines()
    for statement in reversed(ast.parse(source).body):
        if not isinstance(statement, (ast.Import, ast.ImportFrom)):
            continue
        kept = [alias for alias in statement.names
                if (alias.asname or alias.name.split(".")[0]) in used]
        if len(kept) == len(statement.names):
            continue
        statement.names = kept
        lines[statement.lineno - 1:statement.end_lineno] = [ast.unparse(statement)] if kept else []
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def migrate_old_setup(notebook, path: Path) -> None:
    """An old Setup cell (install block + imports) split into the generated Setup cell and a cell
    of the notebook's imports after it (unused ones dropped; `ruff check --fix` sorts them)."""
    cell = setup_cell(notebook)
    imports = _imports_of_old_setup(cell.source, path)
    used = _python_names(imports)  # the names an import binds are not read there
    for other in notebook.cells:
        if other.cell_type == "code" and other is not cell:
            used |= _python_names(other.source)
    imports = _without_unused_imports(imports, used)
    cell.source, cell.outputs, cell.execution_count = "", [], None
    if imports:
        imports_cell = nbformat.v4.new_code_cell(imports, metadata=copy.deepcopy(cell.metadata),
                                                 id=f"{cell.get('id', 'setup')}-imports")
        notebook.cells.insert(notebook.cells.index(cell) + 1, imports_cell)


def setup_options(source: str) -> str:
    """The keyword arguments of a Setup cell's `setup_notebook(...)` call other than
    `keras_gates` (which the generator derives), as written; "" for none."""
    if SETUP_CALL not in source:
        return ""
    calls = [node for node in ast.walk(ast.parse(_python_source(source)))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup_notebook"]
    return ", ".join(ast.unparse(keyword) for call in calls for keyword in call.keywords
                     if keyword.arg != "keras_gates").replace("'", '"')


def updated_setup(notebook, path: Path):
    """A copy of `notebook` whose Setup cell is the current `setup_source` for the Keras gates
    its sections use (an old Setup cell is migrated first: `migrate_old_setup`). A first code
    cell that is neither is left as it is (tests/test_repository.py requires a Setup cell in
    every notebook)."""
    notebook = copy.deepcopy(notebook)
    cell = setup_cell(notebook)
    old = cell is not None and (OLD_INSTALL_START in cell.source or OLD_INSTALL_END in cell.source
                                or OLD_COLAB_INSTALL.search(cell.source))
    if cell is None or not (old or SETUP_CALL in cell.source):
        return notebook
    if old:
        migrate_old_setup(notebook, path)
    cell.source = setup_source(keras_gates_used(notebook), options=setup_options(cell.source))
    return notebook


def plan_setup_cells(root: Path = ROOT) -> dict[Path, object]:
    """Notebooks whose Setup cell would change, mapped to the updated notebook."""
    changes = {}
    for path in notebook_paths(Path(root)):
        notebook = nbformat.read(path, as_version=4)
        updated = updated_setup(notebook, path)
        if [c.source for c in updated.cells] != [c.source for c in notebook.cells]:
            changes[path] = updated
    return changes


def apply_setup_cells(changes: dict[Path, object]) -> None:
    for path, notebook in changes.items():
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
    with usage_errors(parser):
        if not (root / "README.md").is_file() or not (root / "notebooks").is_dir():
            refuse("--root", str(args.root), "it must be a checkout of this repository (a folder "
                   "with README.md and notebooks/)")
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
                print(f"  {name} (Setup cell)")
            return 1
        print(f"notebook_index: README.md and {len(notebook_paths(root))} notebooks are up to date")
        return 0
    apply(changes)
    apply_setup_cells(plan_setup_cells(root))  # planned again: `apply` rewrote badge lines
    for name in names + setup_names:
        print(f"notebook_index: updated {name}")
    if not changes and not setup_changes:
        print("notebook_index: nothing to update")
    return 0


if __name__ == "__main__":
    sys.exit(main())
