"""The README's results section, generated from a cross-validation results folder.

    python -m helpers.report results/full-scale          # rewrite README.md's results block
    python -m helpers.report results/full-scale --check  # exit 1 if it is out of date

The block sits between ``<!-- results:start -->`` and ``<!-- results:end -->``; every number in it
comes from the folder's table.csv (written by notebook 04), through the same summary and tests the
notebook prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from helpers.compare import paired_comparison, summarize, verdict
from helpers.plots import METHOD_LABELS

START, END = "<!-- results:start -->", "<!-- results:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def results_markdown(results_path: Path, relative_to: Path) -> str:
    """Markdown for the results folder: figure, settings, summary table, test verdicts."""
    table = pd.read_csv(results_path / "table.csv")
    settings = json.loads((results_path / "settings.json").read_text())
    info = json.loads((results_path / "run_info.json").read_text())
    summary = summarize(table)
    folder = results_path.resolve().relative_to(relative_to.resolve()).as_posix()
    lines = [
        f"![Learning curves, mean ± std over folds]({folder}/curves.png)",
        "",
        f"{settings['folds']}-fold stratified CV on the {settings['samples']:,} MNIST training "
        f"images, {settings['epochs']} epochs, batch size {settings['batch_size']}, seed "
        f"{settings['seed']}; TensorFlow {info['tensorflow']}, Keras {info['keras']}, "
        f"{info['cpu_count']} CPU cores ({info['machine']}); training time summed over all runs "
        f"{info['training_seconds_all_folds'] / 3600:.1f} h. Mean ± std over folds:",
        "",
        "| method | final val loss | final val accuracy | best val loss | epoch of best "
        "| val loss rise after best | s / epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in summary.index:
        row = summary.loc[method]

        def cell(name, digits=4, row=row):
            return f"{row[name + '_mean']:.{digits}f} ± {row[name + '_std']:.{digits}f}"

        lines.append(
            f"| {METHOD_LABELS.get(method, method)} | {cell('final_val_loss')} "
            f"| {cell('final_val_accuracy')} | {cell('best_val_loss')} | {cell('best_epoch', 1)} "
            f"| {cell('val_loss_rise')} | {cell('seconds_per_epoch', 1)} |"
        )
    lines.append("")
    methods = list(summary.index)
    for a, b in (("naive", "fit"), ("matched", "fit")):
        if a in methods and b in methods:
            for column in ("val_loss", "val_accuracy"):
                lines.append(f"- {verdict(paired_comparison(table, a, b, column), METHOD_LABELS)}")
    lines.append("")
    lines.append(f"Tidy table, summary, tests and machine: [`{folder}/`]({folder}/).")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results folder written by notebook 04")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    updated = replace_block(current, results_markdown(args.results, args.readme.parent))
    if args.check:
        if updated != current:
            print(f"{args.readme}: results block is out of date; run "
                  f"python -m helpers.report {args.results}")
            return 1
        return 0
    args.readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
