"""Record how long the quick run (scripts/run_notebooks.sh at the defaults) took, from papermill's
own timestamps in the executed notebooks, into a committed folder:

    bash scripts/run_notebooks.sh                                 # in a fresh clone
    .venv/bin/python scripts/record_quick_run.py output/notebooks results/quick-run \
        --conditions "idle 2-core machine, fresh clone"

durations.csv has one row per notebook (papermill's start, end and duration); run_info.json the
machine, the versions, the wall time from the first notebook's start to the last one's end (for
all notebooks, and for the main sequence without the appendices), and the conditions given.
The README's sentence on the quick run quotes it (tests/test_readme.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pandas as pd

import helpers.notebook.quiet_tensorflow  # noqa: F401 (before TensorFlow: no start-up log lines)

# isort: split
from helpers.experiments.store import run_info
from helpers.tooling.notebook_index import is_appendix, notebooks_in


def durations(executed_dir: Path) -> pd.DataFrame:
    """One row per executed notebook: papermill's start_time, end_time and duration (s)."""
    rows = []
    for path in notebooks_in(executed_dir):
        meta = nbformat.read(path, as_version=4).metadata.get("papermill", {})
        if meta.get("exception") or meta.get("duration") is None:
            raise ValueError(f"{path} did not run to the end under papermill")
        rows.append({"notebook": path.name, "start_time": meta["start_time"],
                     "end_time": meta["end_time"], "seconds": round(meta["duration"], 1)})
    if not rows:
        raise FileNotFoundError(f"no executed notebooks in {executed_dir}")
    return pd.DataFrame(rows)


def wall_seconds(table: pd.DataFrame) -> float:
    """From the first notebook's start to the last one's end."""
    start = min(datetime.fromisoformat(t) for t in table["start_time"])
    end = max(datetime.fromisoformat(t) for t in table["end_time"])
    return round((end - start).total_seconds(), 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("executed_dir", type=Path)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--conditions", required=True,
                        help="what else the machine was doing, and how the run was started")
    args = parser.parse_args(argv)
    try:
        table = durations(args.executed_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"record_quick_run: {error}", file=sys.stderr)
        return 1
    args.results_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.results_dir / "durations.csv", index=False)
    main_sequence = table[[not is_appendix(Path(name)) for name in table["notebook"]]]
    info = {**run_info(), "notebooks": len(table), "wall_seconds": wall_seconds(table),
            "main_sequence_notebooks": len(main_sequence),
            "main_sequence_seconds": wall_seconds(main_sequence),
            "date": table["start_time"].min()[:10], "conditions": args.conditions}
    (args.results_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"{len(table)} notebooks in {info['wall_seconds']:.0f} s, the main sequence's "
          f"{len(main_sequence)} in {info['main_sequence_seconds']:.0f} s; written to "
          f"{args.results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
