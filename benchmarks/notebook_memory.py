"""Peak memory of each notebook run at its default parameters, against Binder's 2 GB.

    .venv/bin/python benchmarks/notebook_memory.py            # every notebook, in order
    .venv/bin/python benchmarks/notebook_memory.py 01 04      # those whose name starts so

Each notebook runs headless with papermill (as scripts/run_notebooks.sh runs it) in its own
process. Two figures per notebook:
- kernel peak: the largest resident set any single process reached (the kernel, in practice),
  from the kernel's own accounting (`ru_maxrss` of the papermill process and the children it
  waited for, via os.wait4), so no short peak is missed;
- total peak: the memory of papermill, the kernel and every process they start (appendix A3's
  workers): their private memory plus TensorFlow's shared library pages counted once
  (`tree_memory_kb`), sampled every 0.2 s from /proc (a short peak between samples can be
  missed). Binder limits the whole pod, which also holds the Jupyter server (about 0.1 GB), to
  2 GB.
Writes results/memory/notebook_memory.csv and prints a table (also saved as .log). Linux only.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from helpers.tooling.notebook_index import notebook_paths

ROOT = Path(__file__).resolve().parent.parent
BINDER_LIMIT_MB = 2048
SAMPLE_S = 0.2


def tree_memory_kb(pid: int) -> int:
    """Memory (kB) of `pid` and all its descendants, from /proc/<pid>/status: every process's
    private memory (RssAnon, RssShmem) plus the largest file-backed resident set (RssFile) of
    any one of them. The processes are all Python with TensorFlow, mapping the same libraries,
    so those pages are counted once, as a pod's memory limit counts them; summing resident sets
    would count them once per process (about 0.6 GB each), and proportional set sizes would
    split them with any other TensorFlow process on the machine."""
    private, largest_file, stack = 0, 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                fields = dict(line.split(":", 1) for line in status if line.startswith("Rss"))
            kb = {key: int(value.split()[0]) for key, value in fields.items()}
            private += kb.get("RssAnon", 0) + kb.get("RssShmem", 0)
            largest_file = max(largest_file, kb.get("RssFile", 0))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return private + largest_file


def measure(notebook: Path, executed: Path) -> dict:
    command = [sys.executable, "-m", "papermill", "--cwd", str(notebook.parent), str(notebook),
               str(executed), "-k", "python3", "--no-progress-bar"]
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    peak_total = 0
    stderr_text = []
    reader = threading.Thread(target=lambda: stderr_text.append(process.stderr.read()))
    reader.start()
    while True:
        peak_total = max(peak_total, tree_memory_kb(process.pid))
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(SAMPLE_S)
    reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "notebook": notebook.name,
        "exit_code": process.returncode,
        "kernel_peak_mb": round(usage.ru_maxrss / 1024),  # ru_maxrss is in kB on Linux
        "total_peak_mb": round(peak_total / 1024),
        "seconds": round(time.monotonic() - start),
        "error": "" if process.returncode == 0 else "".join(stderr_text).strip()[-300:],
    }


def main(argv: list[str] | None = None) -> int:
    from helpers.experiments.params import (
        check_output_folder,
        prepare_output_dir,
        refuse,
        usage_errors,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="only notebooks whose name starts so")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "memory")
    parser.add_argument("--note", default="", help="added to the log's first line")
    args = parser.parse_args(argv)
    notebooks = [path for path in notebook_paths(ROOT)
                 if not args.prefixes or path.name.startswith(tuple(args.prefixes))]
    with usage_errors(parser):
        if not notebooks:
            refuse("prefixes", args.prefixes, "no notebook in notebooks/ starts with any of them")
        check_output_folder("--out", args.out)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for notebook in notebooks:
            row = measure(notebook, Path(folder) / notebook.name)
            row["within_binder_2gb"] = row["total_peak_mb"] < BINDER_LIMIT_MB
            rows.append(row)
            print(f"{row['notebook']:<32} exit {row['exit_code']}  kernel peak "
                  f"{row['kernel_peak_mb']:>5} MB  total peak {row['total_peak_mb']:>5} MB  "
                  f"{row['seconds']:>4} s  {row['error']}", flush=True)
    prepare_output_dir(args.out)
    with open(args.out / "notebook_memory.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("tensorflow", "keras"))
    stamp = (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {versions}; Python "
             f"{platform.python_version()}; {os.cpu_count()} CPU cores ({platform.machine()}); "
             "default parameters; Binder limit 2048 MB per pod")
    if args.note:
        stamp += f"; {args.note}"
    lines = [stamp, "notebook,kernel peak MB,total peak MB,seconds,exit code"]
    lines += [f"{r['notebook']},{r['kernel_peak_mb']},{r['total_peak_mb']},{r['seconds']},"
              f"{r['exit_code']}" for r in rows]
    (args.out / "notebook_memory.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(stamp)
    return 0 if all(row["exit_code"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # helpers importable even without `pip install -e .`
    sys.exit(main())
