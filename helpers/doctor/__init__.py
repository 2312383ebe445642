"""The doctor: point it at your own training step or loop, and it tells you where it trains
differently from ``model.fit()``, and why, with the measured number behind each verdict.

    report = check_step(model_fn, make_step, x, y, batch_size=64)
    print(report)             # a short checklist
    report.differences        # keys of STEP_CHECKS, () when your step is fit's
    loop = check_loop(model_fn, train, x, y, epochs=2, batch_size=64)
    print(loop)

`check_step` runs your step and fit's step (``model.fit`` on the first batch) from the same
weights and compares the updated weights. When they differ it proves which of fit's behaviours
explains it: fit's step (`helpers.training.tape_train_step`) with that behaviour switched off
must give your update (`STEP_CHECKS`, `TOLERANCE`). `check_loop` records which samples each step
of your loop sees and compares the epochs with fit's (`LOOP_CHECKS`).

Command line: ``python -m helpers.doctor my_module:make_step --model my_module:model_fn``.

A user-facing tool: it imports the teaching core (helpers.training), which never imports it.
Its modules import `helpers.notebook.quiet_tensorflow` first: TensorFlow without start-up lines.
"""

import importlib

# Loaded on first use, so that `python -m helpers.doctor` (which imports this package first)
# answers a usage error at once, before TensorFlow is imported.
_EXPORTS = {
    "LOOP_CHECKS": "helpers.doctor.loop", "LoopReport": "helpers.doctor.loop",
    "check_loop": "helpers.doctor.loop", "STEP_CHECKS": "helpers.doctor.step",
    "TOLERANCE": "helpers.doctor.step", "StepReport": "helpers.doctor.step",
    "check_step": "helpers.doctor.step",
}
__all__ = ["DoctorError", *_EXPORTS]


class DoctorError(Exception):
    """Bad input: what was given cannot be checked (the message says why, in one line)."""


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
