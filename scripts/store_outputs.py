"""Store a default run's outputs in the committed notebooks.

    bash scripts/run_notebooks.sh                       # executes into output/notebooks/
    .venv/bin/python scripts/store_outputs.py           # copies the outputs into notebooks/

Each committed notebook keeps its own sources and metadata (as JupyterLab writes them) and takes
the executed copy's outputs and execution counts; papermill's own metadata is left behind. A
notebook whose sources differ from its executed copy is refused: that copy ran other code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from helpers.tooling.notebook_index import notebook_paths

ROOT = Path(__file__).resolve().parent.parent


def store(committed: Path, executed: Path) -> None:
    target = nbformat.read(committed, as_version=4)
    source = nbformat.read(executed, as_version=4)
    if [c.source for c in target.cells] != [c.source for c in source.cells]:
        raise SystemExit(f"{executed} was executed from other sources than {committed}; rerun it")
    for cell, ran in zip(target.cells, source.cells):
        if cell.cell_type == "code":
            cell.outputs = ran.outputs
            cell.execution_count = ran.execution_count
    nbformat.write(target, committed)


def main() -> int:
    executed_dir = ROOT / "output" / "notebooks"
    for committed in notebook_paths(ROOT):
        executed = executed_dir / committed.name
        if not executed.exists():
            print(f"store_outputs: {executed} is missing; run scripts/run_notebooks.sh first",
                  file=sys.stderr)
            return 1
        store(committed, executed)
        print(f"store_outputs: {committed.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
