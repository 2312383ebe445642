"""Importing this module imports TensorFlow without its C++ start-up log lines.

Every notebook's Setup cell imports it before Keras (through
`helpers.notebook.setup.setup_notebook`); so do the command-line tools. Importing TensorFlow 2.21
on a machine without a GPU writes, straight to file descriptor 2:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
    E0000 00:00:... cuda_platform.cc:52] failed call to cuInit: ...

-- twice (two libraries each carry a copy of the logging code), and the cuInit line when the
devices are first listed. ``TF_CPP_MIN_LOG_LEVEL`` cannot hide the first lines: they are written
before TensorFlow reads it (hence "before absl::InitializeLog()"), and Jupyter's kernel forwards
the descriptor to the notebook's stderr. So `import_tensorflow` points descriptor 2 at a temporary
file while TensorFlow loads and lists its devices, then writes back every captured line except
these known start-up messages (`is_start_up_line`): anything else -- a real error -- still
reaches stderr.
``TF_CPP_MIN_LOG_LEVEL`` is set to 2 (unless set already) so that later INFO and WARNING lines
from the C++ runtime stay hidden too; errors are still shown.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# TensorFlow's C++ log line: severity letter, MMDD, time, thread id, file:line] (absl's format),
# or date, time, severity letter, file:line] (TensorFlow's own, e.g. TF 2.18's cuda_fft.cc lines)
CPP_LOG_LINE = re.compile(r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ "
                          r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] )"
                          r"(?P<file>[\w.\-/]+):\d+\]")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
# Start-up messages that say nothing about this project's runs: oneDNN is on, no CUDA driver or
# GPU, which CPU instructions the build could use, CUDA plugins registering.
START_UP_SOURCES = ("port.cc", "cudart_stub.cc", "cuda_platform.cc", "cpu_feature_guard.cc",
                    "cuda_dnn.cc", "cuda_fft.cc", "cuda_blas.cc", "cuda_executor.cc",
                    "cuda_driver.cc")
# With op determinism on, TF 2.21's tf.data logs (at ERROR level, but harmless: "Unknown
# attributes will be ignored") that its map op's NodeDef has an attribute its op definition lacks.
NODE_DEF_NOTICE = "NodeDef mentions attribute use_unbounded_threadpool which is not in the op"
CPU_FEATURES_CONTINUATION = "To enable the following instructions:"
# Under mixed_float16 on a CPU without AVX-512 FP16, oneDNN says (at ERROR level, but it only
# means that float16 kernels fall back to Eigen's) that it supports DT_HALF on AVX-512 only.
HALF_NOTICE = "oneDNN supports DT_HALF only on platforms with AVX-512"


def is_start_up_line(line: str) -> bool:
    """True for the lines `start_up_lines_filtered` drops."""
    if line.startswith((ABSL_PREAMBLE, CPU_FEATURES_CONTINUATION)):
        return True
    match = CPP_LOG_LINE.match(line)
    if not match:
        return False
    source = match["file"].rsplit("/", 1)[-1]
    return (source in START_UP_SOURCES
            or (source == "node_def_util.cc" and NODE_DEF_NOTICE in line)
            or (source == "util.cc" and HALF_NOTICE in line))


@contextlib.contextmanager
def start_up_lines_filtered():
    """Within the block, file descriptor 2 goes to a temporary file; afterwards every captured
    line except the known start-up messages (`is_start_up_line`) is written to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines()
                    if line.strip() and not is_start_up_line(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def import_tensorflow():
    """``import tensorflow`` and list its devices with the start-up lines filtered out; returns
    the module. Does nothing more than the import once TensorFlow is loaded."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with start_up_lines_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the cuInit probe happens here
    return tf


tf = import_tensorflow()
