"""A results folder: where cross-validation, the held-out test and the ablation write, and the
rules for writing there.

`ResultsFolder.open(path, settings)` makes the folder or takes it over: a folder holding
``settings.json`` with the same settings is resumed; one with other settings is refused (results
are never mixed), and so is a non-empty folder without it (one the project did not make), before
anything is written. Every file is written atomically -- to a temporary file in the same folder,
then renamed -- so a run killed mid-write leaves the old file or the new one, never half of one.
Importing this module loads no framework (the ablation's analysis reads results with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.experiments.params import (
    RESULTS_MARKER,
    ParameterError,
    check_project_folder,
    check_results_folder,
    refuse,
)

RUN_INFO = "run_info.json"


@contextlib.contextmanager
def written_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; leaving the block renames it to `path`.
    If the block fails the temporary file is removed; only a process killed outright can leave
    one behind, a hidden ``.<name>.<pid>.tmp`` that no reader takes for a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with written_atomically(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def history_table(history: Mapping[str, Sequence], keys: Sequence[str], **labels) -> pd.DataFrame:
    """A row per epoch of a History-like dict: the `labels` as constant columns first (e.g.
    ``method=..., fold=...``), then ``epoch`` (from 1), then `keys` of `history`."""
    table = pd.DataFrame({key: history[key] for key in keys})
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    for position, (name, value) in enumerate(labels.items()):
        table.insert(position, name, value)
    return table


def read_finished(results: ResultsFolder | None, name: str, label: str,
                  verbose: int) -> pd.DataFrame | None:
    """The table `name` that an earlier run finished in `results` (None without a folder or
    before it is finished); with `verbose`, says so after `label`."""
    table = results.read_table(name) if results is not None else None
    if table is not None and verbose:
        print(f"{label}: finished earlier, read {results.path / name}")
    return table


def run_info() -> dict:
    """Machine, library versions and TensorFlow's thread settings, stored beside the results;
    ``threads_to_reproduce`` is the intra-op thread count that retrains them bit for bit
    (`helpers.threads.threads_to_reproduce`)."""
    import keras
    import sklearn
    import tensorflow as tf

    from helpers.threads import thread_settings, threads_to_reproduce

    threads = thread_settings()
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "system": platform.platform(),
        **threads,
        "threads_to_reproduce": threads_to_reproduce(threads["intra_op_threads"]),
    }


def other_settings_error(folder: Path, saved: Mapping, settings: Mapping,
                         remedy: str) -> ParameterError:
    """The one message for a results folder whose settings differ from `settings`: every
    differing setting, saved and now, then `remedy`."""
    differences = ", ".join(
        f"{key}: saved {saved.get(key)!r}, now {settings.get(key)!r}"
        for key in sorted(set(saved) | set(settings))
        if saved.get(key) != settings.get(key)
    )
    return ParameterError(f"results folder {folder} holds results made with other settings "
                          f"({differences}). {remedy}")


class ResultsFolder:
    """A folder of results the project made (see the module's docstring). Paths given to its
    methods are relative to it; they write only into a folder holding settings.json."""

    def __init__(self, path: str | os.PathLike):
        """The folder at `path`; `open` makes it, or checks it, for a run."""
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | os.PathLike, settings: Mapping) -> ResultsFolder:
        """The results folder for `settings`: refuse one made with other settings or not made by
        the project (a ParameterError naming results_dir); otherwise record the settings."""
        folder = cls(path)
        saved = folder.settings()
        if saved is None:
            check_project_folder("results_dir", folder.path, RESULTS_MARKER)
            write_text(folder.path / RESULTS_MARKER,
                       json.dumps(dict(settings), indent=2, sort_keys=True) + "\n")
        elif saved != settings:
            raise other_settings_error(folder.path, saved, settings, "Use another results "
                                       "folder, or delete this one to start over.")
        return folder

    def settings(self) -> dict | None:
        """The settings the folder's results were made with; None if it has none."""
        path = self.path / RESULTS_MARKER
        return json.loads(path.read_text()) if path.exists() else None

    def check_settings(self, name: str, wanted: Mapping) -> None:
        """Before a run: if the folder holds results already, refuse it (a ParameterError naming
        parameter `name`) unless they were made with the `wanted` settings (those keys only)."""
        saved = self.settings()
        differing = [f"{key}: saved {saved.get(key)!r}, now {value!r}"
                     for key, value in wanted.items() if saved and saved.get(key) != value]
        if differing:
            refuse(name, str(self.path), f"its results were made with other settings "
                   f"({', '.join(differing)}); use another folder, or the same settings")

    def check_thread_count(self, name: str, threads: int) -> None:
        """Before resuming a run with ``use_threads(threads)``: refuse (a ParameterError naming
        parameter `name`) a thread count other than the one the folder's results were made
        with, since the results would then no longer reproduce with one count."""
        from helpers.threads import threads_to_reproduce

        recorded = self.recorded_run_info().get("threads_to_reproduce")
        if recorded is not None and recorded != threads_to_reproduce(threads):
            refuse(name, threads, f"the results in {self.path} were made with {recorded} "
                   f"intra-op thread(s) and reproduce bit for bit only with as many; give {name} "
                   f"{recorded}")

    def check_same_settings(self, other: ResultsFolder, why: str) -> None:
        """Refuse `other` unless its results were made with this folder's settings; `why` says
        why they must match."""
        if other.settings() != self.settings():
            raise other_settings_error(other.path, other.settings() or {}, self.settings() or {},
                                       why)

    def read_table(self, name: str) -> pd.DataFrame | None:
        """The CSV table `name` with every float exactly as written; None if it is not there."""
        path = self.path / name
        if not path.exists():
            return None
        # round_trip: pandas 2's default parser can change a float's last digit, and a resumed
        # run must equal an uninterrupted one (pandas 3 round-trips anyway).
        return pd.read_csv(path, float_precision="round_trip")

    def write_table(self, name: str, table: pd.DataFrame, index: bool = False) -> None:
        """`table` as CSV (full float repr), atomically."""
        write_text(self._writable(name), table.to_csv(index=index))

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def write_json(self, name: str, data: Mapping) -> None:
        write_text(self._writable(name), json.dumps(data, indent=2) + "\n")

    def _writable(self, name: str) -> Path:
        """Where `name` goes; refuses a folder without settings.json (one the project did not
        make)."""
        check_results_folder("results_dir", self.path)
        return self.path / name

    def recorded_run_info(self) -> dict:
        """run_info.json's contents; empty if there is none yet."""
        return self.read_json(RUN_INFO) if (self.path / RUN_INFO).exists() else {}

    def record_run_info(self, **fields) -> dict:
        """Update run_info.json with `run_info()` and `fields`; keys it held already keep their
        place, and so do the fields only it has (e.g. the ablation's summary). Returns it."""
        info = {**self.recorded_run_info(), **run_info(), **fields}
        self.write_json(RUN_INFO, info)
        return info
