"""The README's results sections and notebook 02's answer, generated from committed results.

    python -m helpers.tooling.report results/full-scale --ablation results/ablation \
        --held-out results/held-out-test
    python -m helpers.tooling.report ... --check

The first rewrites what is out of date; ``--check`` writes nothing and exits 1 if anything is
stale.

The full-scale block sits between ``<!-- results:start -->`` and ``<!-- results:end -->``; every
number in it comes from the folder's table.csv (written by notebook 02), through the same summary
and tests the notebook prints. With ``--ablation``, the one-fix-at-a-time results (notebook 04)
fill ``<!-- ablation:start -->`` ... ``<!-- ablation:end -->``; the answer in plain words
(`ablation.plain_answer`) fills ``<!-- plain-answer:start -->`` ... ``<!-- plain-answer:end -->``
and the answer's statistics (`ablation.answer_sentence`) ``<!-- answer:start -->`` ...
``<!-- answer:end -->``, in the README and in the first cell of notebook 02 (there
``<!-- ablation-answer:start -->`` ... ``<!-- ablation-answer:end -->``). With ``--held-out``, the
held-out test scores fill ``<!-- held-out:start -->`` ... ``<!-- held-out:end -->``.
Every option is checked before anything is read or written (a usage error, exit status 2); no
framework is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import nbformat
import pandas as pd

from helpers.experiments import ablation
from helpers.experiments.compare import RISE, paired_comparison, summarize, verdict
from helpers.experiments.params import (
    check_existing_file,
    check_results_folder,
    refuse,
    usage_errors,
)
from helpers.experiments.plots import METHOD_LABELS

START, END = "<!-- results:start -->", "<!-- results:end -->"
ABLATION_MARKERS = ("<!-- ablation:start -->", "<!-- ablation:end -->")
ANSWER_MARKERS = ("<!-- answer:start -->", "<!-- answer:end -->")
NOTEBOOK_MARKERS = ("<!-- ablation-answer:start -->", "<!-- ablation-answer:end -->")
PLAIN_MARKERS = ("<!-- plain-answer:start -->", "<!-- plain-answer:end -->")
HELD_OUT_MARKERS = ("<!-- held-out:start -->", "<!-- held-out:end -->")
ROOT = Path(__file__).resolve().parent.parent.parent
README = ROOT / "README.md"
NOTEBOOK_02 = ROOT / "notebooks" / "02_article_loop_vs_fit.ipynb"


def results_markdown(results_path: Path, relative_to: Path) -> str:
    """Markdown for the results folder: settings, the figure's link, summary table, paired
    tests of the final val loss and accuracy and of the val-loss rise."""
    table = pd.read_csv(results_path / "table.csv")
    settings = json.loads((results_path / "settings.json").read_text())
    info = json.loads((results_path / "run_info.json").read_text())
    summary = summarize(table)
    folder = results_path.resolve().relative_to(relative_to.resolve()).as_posix()
    lines = [
        f"{settings['folds']}-fold stratified CV on the {settings['samples']:,} MNIST training "
        f"images, {settings['epochs']} epochs, batch size {settings['batch_size']}, seed "
        f"{settings['seed']}; TensorFlow {info['tensorflow']}, Keras {info['keras']}, "
        f"{info['cpu_count']} CPU cores ({info['machine']}); training time summed over all runs "
        f"{info['training_seconds_all_folds'] / 3600:.1f} h; learning curves: "
        f"[{folder}/curves.png]({folder}/curves.png), the figure at the top. Mean ± std over "
        "folds:",
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
            for column in ("val_loss", "val_accuracy", RISE):
                lines.append(f"- {verdict(paired_comparison(table, a, b, column), METHOD_LABELS)}")
    lines.append("")
    lines.append(f"Tidy table, summary, tests and machine: [`{folder}/`]({folder}/).")
    return "\n".join(lines)


def replace_block(text: str, block: str, markers: tuple[str, str] = (START, END),
                  where: str = "README") -> str:
    start, end = markers
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"{where} needs exactly one {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"


def ablation_effects(ablation_path: Path, baseline_path: Path) -> pd.DataFrame:
    """`helpers.experiments.ablation.effects` of the committed variants and baselines."""
    return ablation.effects(ablation.combined_table(ablation_path, baseline_path))


def ablation_answer(effect_table: pd.DataFrame, baseline_path: Path) -> str:
    """The answer sentence (`helpers.experiments.ablation.answer_sentence`) from the committed
    results."""
    folds = json.loads((baseline_path / "settings.json").read_text())["folds"]
    return ablation.answer_sentence(effect_table, folds)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def ablation_markdown(effect_table: pd.DataFrame, ablation_path: Path, relative_to: Path) -> str:
    """Markdown for the one-fix-at-a-time results (`effect_table` from `ablation_effects`):
    progress, figure, and every variant's numbers for the final val loss and the val loss rise
    after the best epoch."""
    info = json.loads((ablation_path / "run_info.json").read_text())
    settings = json.loads((ablation_path / "settings.json").read_text())
    folder = ablation_path.resolve().relative_to(relative_to.resolve()).as_posix()
    runs = len(ablation.VARIANTS) * settings["folds"]
    if info["finished_runs"] == runs:
        progress = (f"All {runs} (variant, fold) runs, on the same folds and initial weights as "
                    "the table above. Training time ")
    else:
        progress = (f"{info['finished_runs']} of {runs} (variant, fold) runs finished, on the same "
                    "folds and initial weights as the table above; the numbers below use the "
                    f"{_count(info['complete_folds'], 'fold')} every variant has finished. "
                    "Training time so far ")
    lines = [
        f"![Share of the gap each fix closes]({folder}/gap_closed.png)",
        "",
        f"{progress}{info['training_seconds_all_folds'] / 3600:.1f} h summed over runs "
        f"(TensorFlow {info['tensorflow']}, {info['intra_op_threads']} intra-op thread(s), "
        f"steps_per_execution {info['steps_per_execution']}, results bit-identical to 1). "
        "Gap closed = (article's loop − variant) / (article's loop − fit()) per fold; "
        "mean and 95% CI (Nadeau–Bengio) over folds, sign-flip p.",
    ]
    for measure in ("final_val_loss", "val_loss_rise"):
        overview = ablation.effects_overview(effect_table, measure)
        lines += ["", f"**{ablation.MEASURES[measure]}**", "",
                  "| " + " | ".join([overview.index.name, *overview.columns]) + " |",
                  "|" + "---|" * (len(overview.columns) + 1)]
        lines += ["| " + " | ".join([label, *map(str, row)]) + " |"
                  for label, row in zip(overview.index, overview.to_numpy())]
    lines += ["", f"Tables, figure and machine: [`{folder}/`]({folder}/)."]
    return "\n".join(lines)


def held_out_markdown(held_out_path: Path, relative_to: Path) -> str:
    """Markdown for the held-out test: the settings and each method's test loss and accuracy."""
    scores = pd.read_csv(held_out_path / "test_scores.csv", index_col="method")
    settings = json.loads((held_out_path / "settings.json").read_text())
    folder = held_out_path.resolve().relative_to(relative_to.resolve()).as_posix()
    lines = [
        f"Each method trained once on all {settings['samples']:,} training images "
        f"({settings['epochs']} epochs, batch size {settings['batch_size']}, seed "
        f"{settings['seed']}, the same initial weights) and tested on MNIST's "
        f"{settings['test_samples']:,} test images, which no cross-validation touched; nothing "
        "is chosen with them, the last epoch is the result:",
        "",
        "| method | test loss | test accuracy |",
        "|---|---|---|",
    ]
    lines += [f"| {METHOD_LABELS.get(method, method)} | {row.test_loss:.4f} "
              f"| {row.test_accuracy:.4f} |" for method, row in scores.iterrows()]
    lines += ["", f"Per epoch, machine and wall time: [`{folder}/`]({folder}/)."]
    return "\n".join(lines)


def _update_notebook_answer(path: Path, plain: str, answer: str) -> tuple[str, str]:
    """(current text, updated text) of the notebook with its two answer blocks replaced."""
    notebook = nbformat.read(path, as_version=4)
    cell = notebook.cells[0]
    cell.source = replace_block(cell.source, plain, PLAIN_MARKERS, where=path.name)
    cell.source = replace_block(cell.source, answer, NOTEBOOK_MARKERS, where=path.name)
    return path.read_text(), nbformat.writes(notebook) + "\n"


def check_results(name: str, folder: Path, files: tuple[str, ...]) -> None:
    """`folder` must be a results folder holding `files`."""
    check_results_folder(name, folder)
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        refuse(name, str(folder), f"the results folder lacks {', '.join(missing)}")


def check_markers(name: str, path: Path, *pairs: tuple[str, str]) -> None:
    """`path` must be a file holding each of the marker `pairs` once."""
    text = check_existing_file(name, path).read_text()
    for start, end in pairs:
        if text.count(start) != 1 or text.count(end) != 1:
            refuse(name, str(path), f"it needs exactly one {start} ... {end} block")


def check_report_options(args: argparse.Namespace) -> None:
    """The folders read and the files rewritten, before anything is read or written."""
    check_results("results", args.results, ("table.csv", "run_info.json"))
    readme_markers = [(START, END)]
    if args.ablation is not None:
        check_results("--ablation", args.ablation, ("run_info.json",))
        readme_markers += [ABLATION_MARKERS, ANSWER_MARKERS, PLAIN_MARKERS]
        check_markers("--notebook", args.notebook, NOTEBOOK_MARKERS, PLAIN_MARKERS)
    if args.held_out is not None:
        check_results("--held-out", args.held_out, ("test_scores.csv", "settings.json"))
        readme_markers.append(HELD_OUT_MARKERS)
    check_markers("--readme", args.readme, *readme_markers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results folder written by notebook 02")
    parser.add_argument("--ablation", type=Path, default=None,
                        help="results folder of python -m helpers.tooling.run_ablation "
                             "(same settings)")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK_02,
                        help="notebook whose first cell gets the answer (with --ablation)")
    parser.add_argument("--held-out", type=Path, default=None,
                        help="results folder of python -m helpers.tooling.run_heldout")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    with usage_errors(parser):
        check_report_options(args)
    current = args.readme.read_text()
    updated = replace_block(current, results_markdown(args.results, args.readme.parent))
    files = {args.readme: (current, updated)}
    if args.ablation is not None:
        effect_table = ablation_effects(args.ablation, args.results)
        answer = ablation_answer(effect_table, args.results)
        updated = replace_block(updated, ablation_markdown(effect_table, args.ablation,
                                                           args.readme.parent), ABLATION_MARKERS)
        figure = os.path.relpath(args.ablation.resolve() / "gap_closed.png",
                                 args.readme.parent.resolve())
        readme_answer = (f"{answer} See [the figure]({figure}) and "
                         "[notebook 04](notebooks/04_which_difference.ipynb).")
        plain = ablation.plain_answer(effect_table)
        updated = replace_block(updated, plain, PLAIN_MARKERS)
        notebook_figure = os.path.relpath(args.ablation.resolve() / "gap_closed.png",
                                          args.notebook.resolve().parent)
        files[args.notebook] = _update_notebook_answer(
            args.notebook, plain, f"{answer} See [the figure]({notebook_figure}) and "
                                  "[notebook 04](04_which_difference.ipynb).")
        updated = replace_block(updated, readme_answer, ANSWER_MARKERS)
    if args.held_out is not None:
        updated = replace_block(updated, held_out_markdown(args.held_out, args.readme.parent),
                                HELD_OUT_MARKERS)
    files[args.readme] = (current, updated)
    stale = [path for path, (old, new) in files.items() if old != new]
    if args.check:
        for path in stale:
            print(f"{path}: generated results are out of date; run python -m "
                  f"helpers.tooling.report {args.results}"
                  + (f" --ablation {args.ablation}" if args.ablation else "")
                  + (f" --held-out {args.held_out}" if args.held_out else ""))
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path][1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
