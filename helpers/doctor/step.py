"""`check_step`: your training step against fit's, from the same weights, on one batch.

How a verdict is proved. The doctor makes one model per run with ``model_fn()`` and gives each
the same initial weights (``set_weights``) and the same Dropout ``SeedGenerator`` state, so that
two steps that both call the model with ``training=True`` draw the same Dropout mask. It trains
one batch (the first `batch_size` samples) three ways:

1. your step, ``make_step(model)(x_batch, y_batch)``;
2. fit itself, ``model.fit(x_batch, y_batch, batch_size=batch_size, epochs=1, shuffle=False)``;
3. fit's step (`helpers.training.tape_train_step`, run eagerly: a trace per candidate would
   cost more than the step) with one of fit's behaviours switched off (`STEP_CHECKS`), then
   with each pair of them.

Your step matches fit when its updated weights equal fit's (`TOLERANCE`). Otherwise a behaviour
explains the difference only when fit's step with that behaviour (or that pair) switched off
gives your weights, and the smallest such set is the only one: a set whose update cannot be told
from fit's, or from a smaller set's (e.g. ``training`` on a model without Dropout or
BatchNormalization), proves nothing and is not tried; nor is a pair containing a behaviour
that explains your update alone (it could not be the smallest). Anything else is
``"unexplained"``: the doctor never names a known cause it has not reproduced.
"""

from __future__ import annotations

import helpers.notebook.quiet_tensorflow  # noqa: F401  first: TensorFlow without start-up lines

# isort: split
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from helpers import compat
from helpers.doctor import DoctorError
from helpers.notebook.quiet_tensorflow import start_up_lines_filtered
from helpers.training import tape_train_step
from helpers.training.checkpoints import seed_generator_states

# Two updates are "the same" when no weight differs by more than TOLERANCE times the largest
# weight change fit's step makes on that batch. Why 1e-3: a correct step written otherwise than
# fit's (its own loss object, ``sum(model.losses)``, eager rather than a tf.function) adds the same
# float32 numbers in another order, so its gradient differs from fit's by float32 rounding,
# about 1e-7 of the terms summed. Adam divides each gradient by its own magnitude plus
# epsilon=1e-7, which for the near-zero gradients of a step multiplies those rounding errors by
# up to 1/epsilon: measured on the zoo's models (helpers.doctor.zoo), correct steps in other
# styles come within 3.5e-7 of fit's update (relative to its largest change; eager ones), and
# the tf.function ones bit for bit. Every cause in STEP_CHECKS, alone or paired, moves some
# weight by 0.078 to 2 of fit's largest change (a summed loss under Adam: 0.78) -- over 70x the
# tolerance -- and check_step also requires every update it tries to be at least SEPARATION x
# the tolerance away from fit's and from that of each smaller set of switches. The other side:
# a behaviour that changes no weight by more than the tolerance on this batch is reported as a
# match, because on this batch it is one (under Adam a summed loss changes only the weights whose
# gradient is near epsilon; the zoo's batches all have some, at 0.78 of an update).
TOLERANCE = 1e-3
SEPARATION = 10  # an explained difference is >= SEPARATION x TOLERANCE away from fit's update
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")  # Keras' messages print names in bold


class StepCheck(NamedTuple):
    """One of fit's behaviours a step may leave out, and the switch that leaves it out."""

    key: str
    fit: str  # what fit's step does
    yours: str  # what a step does that leaves it out (the verdict)
    switches: dict  # `tape_train_step`'s switches that leave it out; {} for "unexplained"


STEP_CHECKS = {
    check.key: check for check in (
        StepCheck("training", "calls the model with training=True",
                  "your step calls the model without training=True: Dropout and "
                  "BatchNormalization run in inference mode", {"dropout": False}),
        StepCheck("mean_loss", "differentiates the batch-mean loss",
                  "your loss is summed over the batch (or scaled by the batch size)",
                  {"mean_loss": False}),
        StepCheck("regularization_losses", "adds model.losses (e.g. L2 penalties) to the loss",
                  "your loss leaves out model.losses", {"regularization_losses": False}),
        StepCheck("loss_scaling", "scales the loss with optimizer.scale_loss (mixed_float16)",
                  "your step leaves out optimizer.scale_loss, so the LossScaleOptimizer divides "
                  "unscaled gradients by its loss scale", {"loss_scaling": False}),
        StepCheck("unexplained", "",
                  "your update differs from fit's in a way none of the checks above (nor any "
                  "pair of them) reproduces", {}),
    )
}
CAUSES = tuple(key for key in STEP_CHECKS if key != "unexplained")


def _weights(model) -> list[np.ndarray]:
    return [np.asarray(w, dtype=np.float64) for w in model.get_weights()]


def _distance(a, b) -> float:
    """Largest |difference| between two lists of weights."""
    return max((float(np.max(np.abs(u - v))) if u.size else 0.0 for u, v in zip(a, b)),
               default=0.0)


@dataclass(frozen=True)
class StepReport:
    """What `check_step` found. `differences`: keys of `STEP_CHECKS`, () when your step is fit's;
    `max_difference`: largest |Δweight| between your updated weights and fit's; `fit_update`,
    `your_update`: the largest weight change of each step; `scale`: your update over fit's (the
    least-squares factor; 64 for plain SGD and a loss summed over 64 samples, ~1 under Adam,
    which divides the scale out); `distances`: for every set of switched behaviours tried, the
    largest |Δweight| between its update and yours; `applicable`: the checks that could be made
    on this model; `seconds`: the check's wall time."""

    differences: tuple[str, ...]
    max_difference: float
    fit_update: float
    your_update: float
    scale: float
    batch_size: int
    distances: dict = field(default_factory=dict)
    applicable: tuple[str, ...] = ()
    ambiguous: tuple = ()
    seconds: float = 0.0

    @property
    def matches_fit(self) -> bool:
        return not self.differences

    @property
    def tolerance(self) -> float:
        return TOLERANCE * self.fit_update

    def __str__(self) -> str:
        verdict = "matches fit" if self.matches_fit else "DIFFERS from fit"
        lines = [
            f"Your step vs fit's, one batch of {self.batch_size} from the same weights: "
            f"{verdict}.",
            f"  largest |Δweight| from fit's update: {self.max_difference:.3g} (tolerance "
            f"{self.tolerance:.2g}); your update is {self.scale:.3g}× fit's "
            f"(largest change {self.your_update:.3g} vs {self.fit_update:.3g})",
        ]
        explained = tuple(key for key in CAUSES if key in self.differences)
        not_applicable = {
            "regularization_losses": "the model has no model.losses",
            "loss_scaling": "the optimizer is no LossScaleOptimizer (no mixed_float16)",
        }
        for key in CAUSES:
            check = STEP_CHECKS[key]
            if key not in self.applicable:
                lines.append(f"  [-] {key}: nothing to check, {not_applicable[key]}")
            elif key in explained:
                lines.append(f"  [x] {key}: {check.yours} (fit {check.fit})")
            elif "unexplained" in self.differences:  # nothing reproduces your update
                lines.append(f"  [?] {key}: unknown, your update is none of fit's step's "
                             f"(fit {check.fit})")
            else:
                lines.append(f"  [ok] {key}: as fit, which {check.fit}")
        if explained:
            lines.append(f"  Proof: fit's step with {' + '.join(explained)} switched off gives "
                         f"your update to {self.distances[explained]:.3g}, where fit's own is "
                         f"{self.max_difference:.3g} away.")
        if "unexplained" in self.differences:
            nearest = min(self.distances.items(), key=lambda item: item[1], default=None)
            detail = ("" if nearest is None else
                      f"; nearest: {' + '.join(nearest[0])} switched off, still "
                      f"{nearest[1]:.3g} away")
            if self.ambiguous:
                detail += ("; several explanations fit equally: "
                           + ", ".join(" + ".join(s) for s in self.ambiguous))
            lines.append(f"  [x] unexplained: {STEP_CHECKS['unexplained'].yours}{detail}")
        return "\n".join(lines)


def _first_line(error: Exception) -> str:
    """The error in one line: the line that names the cause, which is the first, or the last
    of a tf.function's error ("in user code:", then the traceback inside the function), or the
    second of a Keras layer's ("Exception encountered when calling ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0] == "in user code:":
        lines = lines[-1:]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        lines = lines[1:]
    name = type(error).__name__
    cause = ANSI_CODE.sub("", lines[0]).removeprefix(f"{name}: ") if lines else ""
    return f"{name}: {cause if len(cause) <= 200 else cause[:200] + ' …'}"


def _build(model, x_batch) -> None:
    """Build `model` (and check that it takes `x`) with one sample in inference mode, which
    changes no weight and draws no Dropout mask."""
    try:
        model(x_batch[:1], training=False)
    except Exception as error:
        try:
            detail = f"it takes inputs of shape {model.input_shape}"
        except (AttributeError, ValueError):  # no single input shape to name
            detail = _first_line(error)
        raise DoctorError(f"model_fn()'s model cannot take x (shape "
                          f"{tuple(x_batch.shape[1:])} per sample): {detail}") from error


def _new_model(model_fn) -> keras.Model:
    try:
        model = model_fn()
    except Exception as error:
        raise DoctorError(f"model_fn() raised {_first_line(error)}") from error
    if not isinstance(model, keras.Model):
        raise DoctorError(f"model_fn() returned {type(model).__name__}, not a keras.Model")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise DoctorError(f"model_fn() returned model {model.name!r} uncompiled: call "
                          "model.compile(...) in model_fn")
    return model


class _Start:
    """The initial state every run starts from: weights and Dropout seed states."""

    def __init__(self, model_fn, x_batch):
        self.model_fn, self.x_batch = model_fn, x_batch
        model = _new_model(model_fn)
        _build(model, x_batch)
        self.weights = model.get_weights()
        self.seeds = [v.numpy() for v in seed_generator_states(model)]
        self.first = model  # already in this state: the first run uses it

    def model(self) -> keras.Model:
        if self.first is not None:
            model, self.first = self.first, None
            return model
        model = _new_model(self.model_fn)
        _build(model, self.x_batch)
        model.set_weights(self.weights)
        seeds = seed_generator_states(model)
        if len(seeds) != len(self.seeds):
            raise DoctorError("model_fn() returned models with different Dropout layers")
        for variable, value in zip(seeds, self.seeds):
            variable.assign(value)
        return model


def _candidate(start: _Start, keys, x_batch, y_batch) -> list[np.ndarray]:
    switches = {"dropout": True, "mean_loss": True}
    for key in keys:
        switches.update(STEP_CHECKS[key].switches)
    model = start.model()
    try:
        step = tape_train_step(model, x_batch, y_batch, **switches)
        step.step(x_batch, y_batch)
    except Exception as error:  # e.g. model.losses cannot be left out of several outputs' loss
        raise DoctorError(f"fit's step with {' + '.join(keys)} switched off cannot run on this "
                          f"model: {_first_line(error)}") from error
    return _weights(model)


def _applicable(model) -> tuple[str, ...]:
    keys = ["training", "mean_loss"]
    if model.losses:
        keys.append("regularization_losses")
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        keys.append("loss_scaling")
    return tuple(keys)


def check_step(model_fn: Callable[[], keras.Model], make_step: Callable, x, y, *,
               batch_size: int) -> StepReport:
    """Check your training step against fit's on the first `batch_size` samples of `x`, `y`.

    `model_fn()` returns a compiled Keras model (called once per run; every run is given the
    first one's weights and Dropout seed state, so nothing needs seeding); `make_step(model)`
    returns your ``step(x_batch, y_batch)`` that trains `model` on one batch, however you wrote
    it (eager or tf.function, the model's optimizer and loss or your own). Returns a
    `StepReport`; ``print(report)`` gives the checklist. Raises `DoctorError`, in one line, for
    input that cannot be checked (an uncompiled model or one that cannot take `x`, a step that
    raises, labels fit cannot train on)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # not tf.function's retracing warning: each run is a new model
    try:
        # oneDNN's notice that float16 falls back to Eigen (mixed_float16 on most CPUs) hidden
        with start_up_lines_filtered():
            return _check_step(model_fn, make_step, x, y, batch_size)
    finally:
        logger.setLevel(level)


def _check_step(model_fn, make_step, x, y, batch_size) -> StepReport:
    began = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DoctorError(f"batch_size={batch_size!r}: it must be an int >= 1")
    if len(x) < batch_size or len(x) != len(y):
        raise DoctorError(f"x and y need the same length, at least batch_size={batch_size} "
                          f"(got {len(x)} and {len(y)})")
    x_batch = tf.convert_to_tensor(np.asarray(x[:batch_size]))
    y_batch = tf.convert_to_tensor(np.asarray(y[:batch_size]))
    start = _Start(model_fn, x_batch)
    initial = [np.asarray(w, dtype=np.float64) for w in start.weights]

    user_model = start.model()  # yours first: a step that raises is refused before fit runs
    try:
        step = make_step(user_model)
    except Exception as error:
        raise DoctorError(f"make_step(model) raised {_first_line(error)}") from error
    if not callable(step):
        raise DoctorError(f"make_step(model) returned {type(step).__name__}, not a step "
                          "function step(x_batch, y_batch)")
    try:
        step(x_batch, y_batch)
    except Exception as error:
        raise DoctorError(f"your step raised {_first_line(error)}") from error
    yours = _weights(user_model)

    fit_model = start.model()
    applicable = _applicable(fit_model)
    # Built before fit, its train function traces once, not twice: fit builds the optimizer and
    # metrics inside its first trace when no strategy is set (helpers.compat.build_like_fit);
    # the variables and the arithmetic are the same.
    try:
        compat.build_like_fit(fit_model, (x_batch, y_batch))
        fit_model.fit(x_batch.numpy(), y_batch.numpy(), batch_size=batch_size, epochs=1,
                      shuffle=False, verbose=0)
    except Exception as error:  # e.g. class-id labels for a loss that wants one-hot ones
        raise DoctorError(f"model.fit on this batch raised {_first_line(error)}") from error
    fit = _weights(fit_model)

    fit_update = _distance(fit, initial)
    tolerance = TOLERANCE * fit_update
    delta_fit = np.concatenate([(f - i).ravel() for f, i in zip(fit, initial)])
    delta_you = np.concatenate([(u - i).ravel() for u, i in zip(yours, initial)])
    scale = float(delta_you @ delta_fit / (delta_fit @ delta_fit)) if fit_update else 1.0
    max_difference = _distance(yours, fit)
    distances, differences, ambiguous = {}, (), ()
    if max_difference > tolerance:
        updates = {(): fit}
        sets = [(key,) for key in applicable] + list(itertools.combinations(applicable, 2))
        for keys in sets:
            smaller = [s for s in updates if set(s) < set(keys)]
            if any(distances.get(s, np.inf) <= tolerance for s in smaller):
                continue  # a smaller set explains your update already: this one is not minimal
            candidate = _candidate(start, keys, x_batch, y_batch)
            # a set whose update cannot be told from a smaller one's proves nothing
            if all(_distance(candidate, updates[s]) > SEPARATION * tolerance for s in smaller):
                updates[keys] = candidate
                distances[keys] = _distance(yours, candidate)
        matched = [keys for keys, d in distances.items() if d <= tolerance]
        minimal = [keys for keys in matched if not any(set(m) < set(keys) for m in matched)]
        if len(minimal) == 1:
            differences = tuple(sorted(minimal[0], key=CAUSES.index))
        else:
            differences, ambiguous = ("unexplained",), tuple(minimal)
    return StepReport(differences, max_difference, fit_update, _distance(yours, initial),
                      scale, batch_size, distances, applicable, ambiguous,
                      time.perf_counter() - began)
