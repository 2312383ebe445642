"""One way to fix TensorFlow's thread pools, for every command and worker that takes
``--threads``: committed results reproduce bit for bit with the thread count they were made with
(tests/test_reproduction.py), so the count is set here and recorded with the results."""

from __future__ import annotations

import os


def use_threads(threads: int) -> dict[str, int]:
    """Limit TensorFlow's intra-op and inter-op pools to `threads` each (0 keeps TensorFlow's
    default: all cores). Call it before TensorFlow runs its first op. Returns `thread_settings`."""
    import tensorflow as tf  # here, so that importing this module loads no framework

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    return thread_settings()


def thread_settings() -> dict[str, int]:
    """The intra-op and inter-op thread counts in force (0: TensorFlow's default), as recorded in
    a results folder's run_info.json."""
    import tensorflow as tf

    return {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def threads_to_reproduce(threads: int) -> int:
    """The intra-op thread count of a run made after ``use_threads(threads)``: `threads`, or for 0
    TensorFlow's default: the environment's ``TF_NUM_INTRAOP_THREADS`` where that is a positive
    integer (as TensorFlow reads it: tensorflow/core/common_runtime/process_util.cc,
    ``NumIntraOpThreadsFromEnvironment``), else one per CPU this process may run on. Retraining
    reproduces its results bit for bit with this count, and in general not with another
    (TensorFlow splits its reductions by thread). Needs no TensorFlow."""
    if threads:
        return threads
    from_environment = os.environ.get("TF_NUM_INTRAOP_THREADS", "").strip()
    if from_environment.isdigit() and int(from_environment) > 0:
        return int(from_environment)
    return len(os.sched_getaffinity(0))
