"""Resident memory per model when many models are trained one after another in one process
(cross-validation folds, a search), for fit, the article's tape loop and the matched loop, and
what each candidate remedy does to it.

    python benchmarks/memory_per_model.py                          # every configuration, 40 models
    python benchmarks/memory_per_model.py --configs fit,fit+reuse --models 60
    python benchmarks/memory_per_model.py --quick --out /tmp/mem   # seconds-long smoke run

Every configuration runs in its own fresh Python process (so none inherits another's heap), which
trains `--models` models one after another: model i is ``create_cnn(seed=i)``, trained for
`--epochs` on fold ``i % 5`` of ``load_mnist("train", subset=1.25 x --images, seed=0)`` (train on
`--images` images, validate on the rest). After every model the process's resident set (VmRSS
from /proc/self/status) is read, together with the number of functions registered in
TensorFlow's eager runtime and of live FuncGraph / AtomicFunction / ConcreteFunction / tf.function
objects (``gc.get_objects()`` by type name) and of entries in TensorFlow's global gradient
registry, counted after the RSS is read.

Per model: ``seconds`` is the wall time of building and training it; ``tracing_s`` is the first
training step's wall time minus the median of the model's later steps' (the trace of the training
step plus its one-off setup; the validation step's trace is not in it). Wall times: summary.csv's
``load_1min`` is the 1-minute load average at the end of each configuration, and environment.txt
labels the wall times MEASURED UNDER LOAD when one exceeds 1.5 (memory slopes are not
load-sensitive).

Per configuration (summary.csv): the least-squares slope of RSS over the models after the first
`--warmup` (MiB per model), its intercept, and the medians of seconds and tracing_s over the same
models. Configurations (`--configs`, comma-separated; see CONFIGS):

- ``create_only``: ``create_cnn`` only, nothing trained;
- ``fit``, ``naive``, ``matched``: each model trained by that trainer of helpers.training;
  ``mixed``: fit, naive, matched in turn (as cross-validation does, one model per method and fold);
- ``mixed+<remedy>``: the same with a remedy, applied *before* each model (``gc``,
  ``clear_session`` = ``keras.backend.clear_session(free_memory=False)``, ``clear_gc`` = both,
  with the previous model still bound to the loop variable, as in a user's loop) or *after* it
  (``del``: the model, its History and every tf.function reference the helpers keep deleted, then
  ``gc.collect()``; ``malloc_trim``: glibc's ``malloc_trim(0)`` through ctypes), or for the whole
  process (``arena2``: ``MALLOC_ARENA_MAX=2``); ``mixed+all`` is all of them together;
  ``mixed+prune_registry`` (an experiment on TensorFlow internals, not a remedy to ship): ``del``
  + ``gc`` after each model, and the ``CustomGradient-*`` entries that the model's traces added
  to TensorFlow's global gradient registry (``ops.gradient_registry``) removed;
  ``mixed+process``: each model trained in its own spawned process
  (``ProcessPoolExecutor(max_tasks_per_child=1)``); the RSS is the parent's, and ``seconds``
  includes the child's start (Python + TensorFlow import);
- ``<method>+reuse``: ONE model and its traced functions, `helpers.training.FoldTrainer`:
  for model i, ``create_cnn(seed=i)`` is built and its starting state (weights, Dropout
  SeedGenerator state, an unused optimizer) copied into the kept model, which is trained again
  (fit reuses ``model.train_function``, the tape loops their `Trainer`'s traced step);
  ``mixed+reuse`` keeps one per method;
- ``cv``: the project's cross-validation, ``helpers.experiments.cv.cross_validate`` of fit,
  naive and matched by name (a `FoldTrainer` each) on ``models // 3`` stratified folds of
  ``load_mnist("train", seed=0)`` (``images`` training images a fold), RSS read after every
  (method, fold); ``cv+fresh``: the same with ``helpers.training.METHODS``' functions, a new
  model and trace per (method, fold), as cross_validate trained before `FoldTrainer`;
  ``cv_all``: ``cv`` of all 11 methods (the ablation's 8 variants too). For the cv
  configurations the warm-up is at least the first fold (each method's model and first trace);
- ``mixed+release_steps``: ``mixed``, then, after the last model, the RSS and counts after each
  step that might free the models' memory (release_steps.csv);
- ``mixed+tracemalloc``: ``mixed`` with ``tracemalloc`` on (slow); writes the top 10 Python
  allocation sites (file:line) grown between model 10 and model 20 and the traced total next to
  the RSS growth (tracemalloc_top10.txt).

Writes per_model.csv, summary.csv and environment.txt (versions, CPU count, load, the command)
to `--out` (results/memory-per-model by default), which must be empty, new, or made by this
script; re-running some configurations there replaces their rows and keeps the others'
(environment.txt then gets the later run's command appended). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "results" / "memory-per-model"
MARKER = ".memory_per_model"  # says this script made the folder
METHODS = ("fit", "naive", "matched")
# helpers.training.METHODS' names, spelled out: the parent process does not import TensorFlow
ALL_METHODS = (*METHODS, *(f"naive+{key}" for key in ("dropout", "mean_loss", "shuffle",
                                                      "partial_batch")),
               *(f"matched-{key}" for key in ("dropout", "mean_loss", "shuffle",
                                              "partial_batch")))
FOLDS = 5
QUICK = {"models": 3, "images": 96, "warmup": 1, "configs": "create_only,matched+reuse"}


def _config(methods, before=(), after=(), env=None, process=False, reuse=False, cv=False,
            tracemalloc=False, release_steps=False, description=""):
    return {"methods": tuple(methods), "before": tuple(before), "after": tuple(after),
            "env": dict(env or {}), "process": process, "reuse": reuse, "cv": cv,
            "tracemalloc": tracemalloc, "release_steps": release_steps,
            "description": description}


CONFIGS = {
    "create_only": _config((), description="create_cnn(seed=i) only, nothing trained"),
    **{m: _config((m,), description=f"train_{m}, a new model each time") for m in METHODS},
    "mixed": _config(METHODS, description="fit, naive, matched in turn, a new model each time"),
    "mixed+gc": _config(METHODS, before=("gc",), description="gc.collect() before each model"),
    "mixed+clear_session": _config(
        METHODS, before=("clear_session",),
        description="keras.backend.clear_session(free_memory=False) before each model"),
    "mixed+clear_gc": _config(
        METHODS, before=("clear_session", "gc"),
        description="clear_session() + gc.collect() before each model"),
    "mixed+del": _config(
        METHODS, after=("del", "gc"),
        description="model, History and tf.function references deleted + gc.collect() after "
                    "each model"),
    "mixed+malloc_trim": _config(METHODS, after=("malloc_trim",),
                                 description="malloc_trim(0) after each model"),
    "mixed+arena2": _config(METHODS, env={"MALLOC_ARENA_MAX": "2"},
                            description="MALLOC_ARENA_MAX=2 for the process"),
    "mixed+all": _config(
        METHODS, before=("clear_session", "gc"), after=("del", "gc", "malloc_trim"),
        env={"MALLOC_ARENA_MAX": "2"},
        description="clear_session + gc before, del + gc + malloc_trim after, MALLOC_ARENA_MAX=2"),
    "mixed+prune_registry": _config(
        METHODS, after=("del", "prune_registry", "gc"),
        description="EXPERIMENT on TensorFlow internals: del + gc after each model, and the "
                    "CustomGradient-* entries the model's traces added to TensorFlow's global "
                    "gradient registry removed"),
    "mixed+process": _config(METHODS, process=True,
                             description="each model in its own spawned process"),
    **{f"{m}+reuse": _config(
        (m,), reuse=True,
        description="FoldTrainer: one model and its traced functions, each model's starting "
                    "state copied in") for m in METHODS},
    "mixed+reuse": _config(METHODS, reuse=True,
                           description="one FoldTrainer per method"),
    "cv": _config(METHODS, cv=True, reuse=True,
                  description="the project's cross_validate of fit, naive, matched (one "
                              "FoldTrainer per method)"),
    "cv+fresh": _config(METHODS, cv=True,
                        description="cross_validate with a new model and trace per (method, "
                                    "fold), as before FoldTrainer"),
    "cv_all": _config(ALL_METHODS, cv=True, reuse=True,
                      description="the project's cross_validate of all 11 methods (one "
                                  "FoldTrainer each)"),
    "mixed+release_steps": _config(
        METHODS, release_steps=True,
        description="mixed, then after the last model what each step frees (release_steps.csv)"),
    "mixed+tracemalloc": _config(METHODS, tracemalloc=True,
                                 description="mixed with tracemalloc on (diagnosis; slower)"),
}
PER_MODEL_FIELDS = ("config", "model", "method", "rss_mib", "rss_before_remedy_mib", "seconds",
                    "tracing_s", "runtime_functions", "func_graphs", "atomic_functions",
                    "concrete_functions", "tf_functions", "gradient_registry",
                    "tracemalloc_mib", "child_rss_mib")
SUMMARY_FIELDS = ("config", "slope_mib_per_model", "intercept_mib", "models", "warmup",
                  "rss_first_mib", "rss_last_mib", "seconds_per_model", "tracing_s_per_model",
                  "runtime_functions_per_model", "func_graphs_per_model", "load_1min",
                  "description")
UNDER_LOAD = 1.5  # a 1-minute load average above this: wall times measured under load


# ---------------------------------------------------------------- measurements (in the child)

def rss_mib() -> float:
    """This process's resident set (VmRSS), MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def live_counts() -> dict:
    """Functions registered in TensorFlow's eager runtime, and live graph/function objects."""
    import gc
    from collections import Counter

    from tensorflow.python.eager import context
    from tensorflow.python.framework import ops

    names = Counter(type(obj).__name__ for obj in gc.get_objects())
    return {
        "runtime_functions": len(context.context().list_function_names()),
        "func_graphs": names["FuncGraph"],
        "atomic_functions": names["AtomicFunction"],
        "concrete_functions": names["ConcreteFunction"],
        "tf_functions": names["Function"],  # polymorphic tf.function objects
        # gradient functions registered by graph-mode tf.custom_gradient (one per call)
        "gradient_registry": len(ops.gradient_registry._registry),
    }


def malloc_trim() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _step_timer():
    """A Keras callback timing every training step (driven by fit's and the tape loops' own
    CallbackList: synchronous, since it is not ``async_safe``)."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.durations = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.durations.append(time.perf_counter() - self.start)

    return StepTimer()


def tracing_seconds(durations) -> float:
    """The first step's time minus the median of the later steps' (nan with < 2 steps)."""
    if len(durations) < 2:
        return float("nan")
    return durations[0] - statistics.median(durations[1:])


def fold_data(x, y, index: int, images: int):
    """Fold ``index % FOLDS``: `images` training images, the rest of `x` to validate."""
    import numpy as np

    fold = index % FOLDS
    n_val = len(x) - images
    val = np.arange(fold * n_val, (fold + 1) * n_val) % len(x)
    train = np.setdiff1d(np.arange(len(x)), val)
    return (x[train], y[train]), (x[val], y[val])


def load_data(images: int):
    from helpers.data import load_mnist

    return load_mnist("train", subset=images + max(images // 4, 16), seed=0)


def train_new_model(method: str, index: int, data, images: int, epochs: int, batch_size: int,
                    train=None):
    """`create_cnn(seed=index)` trained by `train` (default: the helpers' training function of
    `method`); (model, history, timer)."""
    from helpers.model import create_cnn
    from helpers.training import METHODS as TRAINERS

    model = create_cnn(seed=index)
    if method is None:
        return model, None, None
    train_data, val_data = fold_data(*data, index, images)
    timer = _step_timer()
    history = (train or TRAINERS[method])(model, train_data, val_data, epochs=epochs,
                                          batch_size=batch_size, seed=index, verbose=0,
                                          callbacks=[timer])
    return model, history, timer


def custom_gradient_names() -> set:
    """The names in TensorFlow's process-global gradient registry that graph-mode
    ``tf.custom_gradient`` made (``CustomGradient-<uid>``, tensorflow/python/ops/
    custom_gradient.py, ``_graph_mode_decorator``); never removed by TensorFlow."""
    from tensorflow.python.framework import ops

    return {name for name in ops.gradient_registry._registry
            if name.startswith("CustomGradient-")}


def prune_gradient_registry(keep: set) -> None:
    """Remove the ``CustomGradient-*`` entries not in `keep` (an experiment on TensorFlow's
    internals: safe here only because the functions that would use them are gone)."""
    from tensorflow.python.framework import ops

    for name in custom_gradient_names() - keep:
        del ops.gradient_registry._registry[name]


def _child_one_model(method, index, images, epochs, batch_size):
    """One model in a spawned process: (child's RSS MiB, seconds, tracing s)."""
    began = time.perf_counter()
    data = load_data(images)
    _, _, timer = train_new_model(method, index, data, images, epochs, batch_size)
    return rss_mib(), time.perf_counter() - began, tracing_seconds(timer.durations)


def run_config(name: str, models: int, images: int, epochs: int, batch_size: int,
               warmup: int, out_json: Path, extra_dir: Path) -> None:
    """Run one configuration in this process; write its per-model rows as JSON."""
    import gc

    config = CONFIGS[name]
    if config["tracemalloc"]:
        import tracemalloc
    rows = []
    methods = config["methods"]

    def method_of(index):
        return methods[index % len(methods)] if methods else None

    if config["process"]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        for index in range(models):
            began = time.perf_counter()
            with ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
                child_rss, _, tracing = pool.submit(
                    _child_one_model, method_of(index), index, images, epochs, batch_size
                ).result()
            rows.append({"config": name, "model": index + 1, "method": method_of(index),
                         "rss_mib": rss_mib(), "seconds": time.perf_counter() - began,
                         "tracing_s": tracing, "child_rss_mib": child_rss})
        out_json.write_text(json.dumps(rows))
        return

    import keras

    data = load_data(images)
    reused = {}
    if config["reuse"]:
        from helpers.training import FoldTrainer

        reused = {m: FoldTrainer(m) for m in methods}
    if config["cv"]:
        run_cross_validation(name, methods, reused, models, images, epochs, batch_size,
                             out_json)
        return
    snapshots = {}
    span = (min(10, models), min(20, models))
    if config["tracemalloc"]:
        tracemalloc.start(1)
    model = history = timer = None
    for index in range(models):
        method = method_of(index)
        row = {"config": name, "model": index + 1, "method": method}
        if config["before"]:
            row["rss_before_remedy_mib"] = rss_mib()
        if "clear_session" in config["before"]:
            keras.backend.clear_session(free_memory=False)
        if "gc" in config["before"]:
            gc.collect()
        if "prune_registry" in config["after"]:
            registered_before = custom_gradient_names()
        began = time.perf_counter()
        model, history, timer = train_new_model(method, index, data, images, epochs,
                                                batch_size, reused.get(method))
        durations = timer.durations if timer else []
        row["seconds"] = time.perf_counter() - began
        row["tracing_s"] = tracing_seconds(durations)
        if config["after"]:
            row["rss_before_remedy_mib"] = rss_mib()
        if "del" in config["after"]:
            del model, history, timer
            model = history = timer = None
        if "prune_registry" in config["after"]:
            prune_gradient_registry(registered_before)
        if "gc" in config["after"]:
            gc.collect()
        if "malloc_trim" in config["after"]:
            malloc_trim()
        row["rss_mib"] = rss_mib()
        if config["tracemalloc"]:
            row["tracemalloc_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
            if index + 1 in span:
                snapshots[index + 1] = (tracemalloc.take_snapshot(), row["rss_mib"],
                                        row["tracemalloc_mib"])
        row.update(live_counts())
        rows.append(row)
        print(f"{name} model {index + 1}/{models} {method}: {row['rss_mib']:.1f} MiB "
              f"{row['seconds']:.2f} s", flush=True)
    if len(snapshots) == 2:
        write_tracemalloc_report(snapshots, span, extra_dir / "tracemalloc_top10.txt")
    if config["release_steps"]:
        del model, history, timer
        write_release_steps(extra_dir / "release_steps.csv")
    out_json.write_text(json.dumps(rows))


def run_cross_validation(name, methods, reused, models, images, epochs, batch_size,
                         out_json: Path) -> None:
    """`cross_validate` of `methods` on ``models // len(methods)`` folds, the `reused` fold
    trainers (or the helpers' training functions, a new model each); RSS read after every
    (method, fold)."""
    from helpers.data import load_mnist
    from helpers.experiments.cv import cross_validate
    from helpers.training import METHODS as TRAINERS

    folds = models // len(methods)
    x, y = load_mnist("train", subset=images * folds // (folds - 1), seed=0)
    rows = []

    def measured(method):
        train = reused.get(method) or TRAINERS[method]

        def train_and_measure(model, *args, **kwargs):
            timer = _step_timer()
            history = train(model, *args, callbacks=[timer], **kwargs)
            row = {"config": name, "model": len(rows) + 1, "method": method,
                   "rss_mib": rss_mib(), "seconds": time.perf_counter() - began[0],
                   "tracing_s": tracing_seconds(timer.durations)}
            row.update(live_counts())
            rows.append(row)
            print(f"{name} model {row['model']}/{folds * len(methods)} {method}: "
                  f"{row['rss_mib']:.1f} MiB {row['seconds']:.2f} s", flush=True)
            began[0] = time.perf_counter()  # the next model's build is in its seconds
            return history
        return train_and_measure

    began = [time.perf_counter()]
    cross_validate({m: measured(m) for m in methods}, x, y, folds=folds, epochs=epochs,
                   batch_size=batch_size, seed=0, verbose=0)
    out_json.write_text(json.dumps(rows))


def write_release_steps(path: Path) -> None:
    """After the last model (the loop variables already dropped): RSS and live counts after
    each step that might free the models' memory, applied one after another."""
    import gc

    import keras

    steps = [
        ("after the last model (model, History, callback dropped)", lambda: None),
        ("+ gc.collect()", gc.collect),
        ("+ keras.backend.clear_session()", keras.backend.clear_session),
        ("+ CustomGradient-* registry entries removed + gc.collect()",
         lambda: (prune_gradient_registry(set()), gc.collect())),
        ("+ malloc_trim(0)", malloc_trim),
    ]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "rss_mib", "runtime_functions", "func_graphs",
                         "atomic_functions", "gradient_registry"])
        for label, step in steps:
            step()
            counts = live_counts()
            writer.writerow([label, round(rss_mib(), 1), counts["runtime_functions"],
                             counts["func_graphs"], counts["atomic_functions"],
                             counts["gradient_registry"]])


def write_tracemalloc_report(snapshots, span, path: Path) -> None:
    (first, rss_a, traced_a), (last, rss_b, traced_b) = snapshots[span[0]], snapshots[span[1]]
    stats = last.compare_to(first, "lineno")
    lines = [f"tracemalloc between model {span[0]} and model {span[1]} (mixed: fit, naive, "
             "matched in turn)",
             f"RSS: {rss_a:.1f} -> {rss_b:.1f} MiB (+{rss_b - rss_a:.1f}); Python allocations "
             f"traced: {traced_a:.1f} -> {traced_b:.1f} MiB (+{traced_b - traced_a:.1f})",
             "top 10 by growth (file:line, size diff, count diff):"]
    for stat in stats[:10]:
        frame = stat.traceback[0]
        lines.append(f"  {frame.filename}:{frame.lineno}  {stat.size_diff / 1024:+.1f} KiB  "
                     f"{stat.count_diff:+d} blocks")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- orchestration (the parent)

def fit_line(xs, ys):
    """Least-squares slope and intercept."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, mean_y - slope * mean_x


def _median(values):
    values = [v for v in values if v is not None and v == v]  # drop None and nan
    return statistics.median(values) if values else float("nan")


def config_warmup(name: str, warmup: int) -> int:
    """The models left out of the slope: `warmup`, and for the cv configurations at least the
    first fold (each method's model and first trace, made once)."""
    config = CONFIGS[name]
    return max(warmup, len(config["methods"])) if config["cv"] else warmup


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (/proc/loadavg)."""
    with open("/proc/loadavg", encoding="ascii") as handle:
        return [float(value) for value in handle.read().split()[:3]]


def summarize(name: str, rows, warmup: int) -> dict:
    warmup = config_warmup(name, warmup)
    measured = [r for r in rows if r["model"] > warmup]
    xs = [r["model"] for r in measured]
    slope, intercept = fit_line(xs, [r["rss_mib"] for r in measured])
    summary = {
        "config": name, "slope_mib_per_model": round(slope, 3),
        "intercept_mib": round(intercept, 1), "models": len(rows), "warmup": warmup,
        "rss_first_mib": round(rows[0]["rss_mib"], 1),
        "rss_last_mib": round(rows[-1]["rss_mib"], 1),
        "seconds_per_model": round(_median(r["seconds"] for r in measured), 3),
        "tracing_s_per_model": round(_median(r.get("tracing_s") for r in measured), 3),
        "description": CONFIGS[name]["description"],
    }
    for key, column in (("runtime_functions_per_model", "runtime_functions"),
                        ("func_graphs_per_model", "func_graphs")):
        if all(column in r for r in measured):
            summary[key] = round(fit_line(xs, [r[column] for r in measured])[0], 2)
    return summary


def merge_earlier(out: Path, rows, summaries):
    """The rows and summaries of an earlier run in `out` for the configurations not run now
    (kept, in their order), then this run's: re-running some configurations replaces only
    theirs."""
    run_now = {s["config"] for s in summaries}
    kept_rows, kept_summaries = [], []
    if (out / "per_model.csv").exists() and (out / "summary.csv").exists():
        with open(out / "per_model.csv", newline="", encoding="utf-8") as handle:
            kept_rows = [{k: v for k, v in r.items() if v != ""}
                         for r in csv.DictReader(handle) if r["config"] not in run_now]
        with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
            kept_summaries = [r for r in csv.DictReader(handle) if r["config"] not in run_now]
    return kept_rows + rows, kept_summaries + summaries


def parse_args(argv=None):
    from helpers.experiments.params import (
        check_integer,
        check_project_folder,
        inside_project_folder,
        refuse,
        usage_errors,
    )

    parser = argparse.ArgumentParser(
        prog="memory_per_model.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", type=int, default=40, help="models per configuration")
    parser.add_argument("--images", type=int, default=1000, help="training images per model")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5,
                        help="first models left out of the slope and medians")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny smoke run: {QUICK} unless given explicitly")
    parser.add_argument("--run-config", help=argparse.SUPPRESS)  # the child's entry point
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given = set(argv if argv is not None else sys.argv[1:])
    if args.quick:
        for key, value in QUICK.items():
            if f"--{key}" not in given:
                setattr(args, key, value)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        with usage_errors(parser):
            refuse("--configs", args.configs, "it must be a comma-separated list from "
                   + ", ".join(CONFIGS))
    args.configs = names
    with usage_errors(parser):
        check_integer("--warmup", args.warmup, 0)
        check_integer("--models", args.models, args.warmup + 2)  # a slope needs two points
        for name in names:  # cv: whole folds, the first one warm-up, then two at least
            needed = max(config_warmup(name, args.warmup) + 2, 3 * len(CONFIGS[name]["methods"]))
            if CONFIGS[name]["cv"] and args.models < needed:
                refuse("--models", args.models, f"{name} needs at least {needed}: its first "
                       "fold is warm-up, and a slope needs two folds after it")
        check_integer("--images", args.images, 16, 40000)
        check_integer("--epochs", args.epochs, 1)
        check_integer("--batch-size", args.batch_size, 1)
        if args.run_config is None and not inside_project_folder(args.out):
            check_project_folder("--out", args.out, MARKER)
    return args


def environment_text(args, argv, elapsed, loads) -> str:
    """The run's settings, versions and machine; `loads`: the 1-minute load average at the end
    of each configuration (summary.csv's load_1min), which labels the wall times."""
    load = load_average()
    timing = (f"wall times (seconds, tracing_s) were MEASURED UNDER LOAD: the 1-minute load "
              f"average reached {max(loads):.2f} (> {UNDER_LOAD}) on {os.cpu_count()} CPUs; "
              "memory slopes are not load-sensitive" if max(loads) > UNDER_LOAD else
              f"wall times measured with a 1-minute load average <= {UNDER_LOAD}")
    versions = {name: metadata.version(name) for name in ("tensorflow", "keras", "numpy")}
    command = "python benchmarks/memory_per_model.py " + shlex.join(argv)
    return "\n".join([
        f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"command: {command}",
        f"python: {platform.python_version()}",
        *(f"{name}: {version}" for name, version in versions.items()),
        f"cpu_count: {os.cpu_count()} ({platform.machine()}, {platform.system()})",
        f"load average at the end (1, 5, 15 min): {' '.join(map(str, load))}",
        "1-minute load average at the end of each configuration: "
        + ", ".join(f"{value:.2f}" for value in loads),
        timing,
        f"models per configuration: {args.models}; warm-up left out: {args.warmup} (cv "
        "configurations: at least their first fold, summary.csv's warmup); images: "
        f"{args.images}; epochs: {args.epochs}; batch size: {args.batch_size}",
        f"total wall time: {elapsed:.0f} s",
    ]) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.run_config:
        run_config(args.run_config, args.models, args.images, args.epochs, args.batch_size,
                   args.warmup, args.rows, args.out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / MARKER).write_text("made by benchmarks/memory_per_model.py\n", encoding="utf-8")
    started = time.monotonic()
    all_rows, summaries, failed = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.configs:
            rows_file = Path(scratch) / f"{name}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--run-config", name,
                       "--configs", name,
                       "--rows", str(rows_file), "--out", str(args.out),
                       "--models", str(args.models), "--images", str(args.images),
                       "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                       "--warmup", str(args.warmup)]
            env = {**os.environ, **CONFIGS[name]["env"], "TF_CPP_MIN_LOG_LEVEL": "2",
                   "PYTHONPATH": os.pathsep.join(
                       p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
            began = time.monotonic()
            result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            if result.returncode != 0 or not rows_file.exists():
                failed.append(name)
                tail = result.stderr.strip().splitlines()[-1:] or ["(no message)"]
                print(f"{name}: FAILED (exit {result.returncode}): {tail[0]}", flush=True)
                continue
            rows = json.loads(rows_file.read_text())
            all_rows += rows
            summaries.append(summarize(name, rows, args.warmup))
            s = summaries[-1]
            s["load_1min"] = load_average()[0]  # the configuration's last minute
            print(f"{name:<22} {s['slope_mib_per_model']:>7.2f} MiB/model  tracing "
                  f"{s['tracing_s_per_model']:.3f} s/model  {s['seconds_per_model']:.2f} s/model"
                  f"  ({time.monotonic() - began:.0f} s)", flush=True)
    all_rows, summaries = merge_earlier(args.out, all_rows, summaries)
    with open(args.out / "per_model.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_MODEL_FIELDS)
        writer.writeheader()
        for row in all_rows:
            writer.writerow({k: (round(v, 4) if isinstance(v, float) else v)
                             for k, v in row.items()})
    with open(args.out / "summary.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(summaries)
    environment = environment_text(args, argv, time.monotonic() - started,
                                   [s["load_1min"] for s in summaries if "load_1min" in s
                                    and s["config"] in args.configs] or load_average()[:1])
    earlier = args.out / "environment.txt"
    if earlier.exists() and (args.out / "summary.csv").exists():
        environment = (earlier.read_text(encoding="utf-8").rstrip("\n")
                       + "\n\n# a later run, of " + ", ".join(args.configs) + " only\n"
                       + environment)
    earlier.write_text(environment, encoding="utf-8")
    print(f"wrote {args.out}/summary.csv, per_model.csv, environment.txt")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # helpers importable even without `pip install -e .`
    sys.exit(main())
