"""helpers.doctor: every zoo step's verdict exactly (the right keys and no others), correct steps
in three styles get no differences, bad input is refused in one line; check_loop's answers for
the zoo's loops; the command line's exit codes.

Kept lean for CI: each zoo step and loop is checked once (module-scoped caches) and every test
reads the same reports; the command line runs in a subprocess once (the real ``python -m``
entry point: exit status, one line on stderr, no traceback, for a usage error answered before
TensorFlow loads), its other cases in-process through ``main(argv)``, where a step already
checked is answered from its report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from helpers import compat
from helpers.doctor import (
    LOOP_CHECKS,
    STEP_CHECKS,
    TOLERANCE,
    DoctorError,
    check_loop,
    check_step,
)
from helpers.doctor.__main__ import main
from helpers.doctor.loop import METRIC_TOLERANCE
from helpers.doctor.zoo import LOOP_MODEL, LOOPS, STEPS, article_cnn

ROOT = Path(__file__).resolve().parent.parent
BATCH = 64
TRAIN = 200  # check_loop's training samples: 3 batches of 64 and a partial one of 8


@pytest.fixture(scope="module")
def data(mnist_small):
    x, y = mnist_small
    return x[:256], y[:256]


@pytest.fixture(scope="module")
def step_report(data):
    """check_step's report for a zoo step, computed once per module."""
    reports = {}

    def report(name):
        if name not in reports:
            entry = STEPS[name]
            if entry.pinned_only and not compat.supports("loss_scaling"):
                pytest.skip("loss scaling needs Keras 3.15")
            reports[name] = check_step(entry.model_fn, entry.make_step, *data, batch_size=BATCH)
        return reports[name]
    return report


@pytest.fixture(scope="module")
def loop_report(data):
    """check_loop's report for a zoo loop (2 epochs, with validation data), computed once."""
    x, y = data
    reports = {}

    def report(name):
        if name not in reports:
            reports[name] = check_loop(LOOP_MODEL, LOOPS[name].train, x[:TRAIN], y[:TRAIN],
                                       epochs=2, batch_size=BATCH,
                                       validation_data=(x[TRAIN:], y[TRAIN:]))
        return reports[name]
    return report


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_zoo_step_gets_its_true_verdict(step_report, name):
    entry, report = STEPS[name], step_report(name)
    assert report.differences == entry.truth, str(report)
    assert report.matches_fit == (not entry.truth)
    assert set(report.differences) <= set(STEP_CHECKS)
    if entry.truth:
        assert report.max_difference > 100 * TOLERANCE * report.fit_update
        assert report.distances[entry.truth] <= TOLERANCE * report.fit_update
    else:
        assert report.max_difference <= TOLERANCE * report.fit_update


def test_three_correct_styles_are_in_the_zoo():
    correct = [name for name in ("compute_loss", "keras_guide", "train_step_override")
               if STEPS[name].truth == ()]
    assert len(correct) == 3


def test_report_reads_as_a_checklist_with_numbers(step_report):
    text = str(step_report("article"))
    assert "DIFFERS from fit" in text
    assert "[x] training" in text and "[x] mean_loss" in text
    assert "Proof:" in text and "×" in text


@pytest.mark.parametrize("name", ["keras_guide", "compute_loss"])
def test_a_tf_function_step_draws_fit_s_dropout_mask(step_report, name):
    """Both steps call the model with training=True once, from the same SeedGenerator state: a
    tf.function step then gives fit's update bit for bit, so it drew fit's Dropout mask."""
    assert step_report(name).max_difference == 0.0


def test_sgd_summed_loss_reports_the_batch_size_factor(data):
    def model_fn():
        model = article_cnn()
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss="categorical_crossentropy")
        return model
    report = check_step(model_fn, STEPS["summed_loss"].make_step, *data, batch_size=BATCH)
    assert report.differences == ("mean_loss",)
    assert report.scale == pytest.approx(BATCH, rel=1e-3)
    assert f"your update is {BATCH:.3g}× fit's" in str(report)


def test_unknown_cause_is_unexplained(data):
    """A doubled learning rate is none of STEP_CHECKS: no known key is named for it."""
    def doubled_learning_rate(model):
        optimizer = keras.optimizers.Adam(2e-3)
        loss_fn = keras.losses.CategoricalCrossentropy()

        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            optimizer.apply(tape.gradient(loss, model.trainable_weights),
                            model.trainable_weights)
        return step
    report = check_step(article_cnn, doubled_learning_rate, *data, batch_size=BATCH)
    assert report.differences == ("unexplained",)
    assert not report.matches_fit
    assert "[x] unexplained" in str(report)
    assert "[ok]" not in str(report)  # nothing is certified as fit's when nothing is explained


def article_cnn_uncompiled():
    from helpers.model import create_cnn
    return create_cnn(seed=0, compile=False)


def test_uncompiled_model_and_raising_step_are_refused(data):
    with pytest.raises(DoctorError, match="uncompiled"):
        check_step(article_cnn_uncompiled, STEPS["article"].make_step, *data,
                   batch_size=BATCH)

    def broken(model):
        def step(x, y):
            raise RuntimeError("boom")
        return step
    with pytest.raises(DoctorError, match="your step raised RuntimeError: boom"):
        check_step(article_cnn, broken, *data, batch_size=BATCH)


# ---- check_loop ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LOOPS))
def test_every_zoo_loop_gets_its_true_verdict(loop_report, name):
    report = loop_report(name)
    assert TRAIN % BATCH  # a partial batch to keep or drop
    assert report.differences == LOOPS[name].truth == LOOPS[name].expected(TRAIN, BATCH), (
        str(report))
    assert set(report.differences) <= set(LOOP_CHECKS)


def test_loop_counts_are_measured(data, loop_report):
    x, y = data
    article = check_loop(LOOP_MODEL, LOOPS["article"].train, x[:TRAIN], y[:TRAIN], epochs=2,
                         batch_size=BATCH)
    assert article.batch_sizes == ((BATCH,) * 3,) * 2  # 200 // 64 steps, no partial batch
    assert article.unseen == (TRAIN - 3 * BATCH,) * 2 and article.repeated == (0, 0)
    assert article.file_order == 2 and article.training_modes == {None: 6}
    assert "[-] validation_training" in str(article)
    assert "[-] running_mean_metrics" in str(article)  # the article's loop returns nothing
    fit = loop_report("fit")
    assert fit.batch_sizes == ((BATCH,) * 3 + (TRAIN - 3 * BATCH,),) * 2
    assert fit.new_orders == 1 and fit.unseen == (0, 0)
    assert fit.validation_modes == {False: 2}
    assert all(sorted(order) == list(range(TRAIN)) for order in fit.orders)
    handson = loop_report("handson_ml3")
    assert all(sum(sizes) == 3 * BATCH for sizes in handson.batch_sizes)
    assert min(handson.repeated) > 0 and min(handson.unseen) > TRAIN - 3 * BATCH
    assert loop_report("validation_in_training_mode").validation_modes == {True: 2}


def test_reported_metrics_are_checked_against_the_running_mean(loop_report):
    """fit's own History is the running mean over each epoch's batches (recomputed from the
    predictions each step made); the loop that reports its last batch's loss is caught."""
    fit = loop_report("fit")
    assert set(fit.metrics) == {"loss", "accuracy"}
    for rows in fit.metrics.values():
        assert all(reported == pytest.approx(running, rel=METRIC_TOLERANCE)
                   for reported, running, _ in rows)
    last = loop_report("last_batch_metrics")
    assert set(last.metrics) == {"loss"}
    assert all(reported == pytest.approx(last_batch, rel=METRIC_TOLERANCE)
               and running != pytest.approx(last_batch, rel=METRIC_TOLERANCE)
               for reported, running, last_batch in last.metrics["loss"])
    assert "[x] running_mean_metrics: loss: the last batch's in 2 of 2 epochs" in str(last)


def test_no_partial_batch_to_drop_when_the_batch_size_divides():
    assert LOOPS["article"].expected(256, BATCH) == ("shuffle",)
    assert LOOPS["article"].expected(250, BATCH) == ("shuffle", "partial_batch")


def test_loop_with_unequal_epochs_is_refused(data):
    def one_step(model, x, y, epochs, batch_size):
        model(x[:batch_size], training=True)
    with pytest.raises(DoctorError, match="same number of steps"):
        check_loop(LOOP_MODEL, one_step, *data, epochs=2, batch_size=BATCH)


# ---- the command line ------------------------------------------------------------------------

CLI_MODULE = '''
from helpers.doctor.zoo import article_cnn, article_step, compute_loss_step, l2_cnn
from helpers.model import create_cnn
model_fn = article_cnn
l2_model_fn = l2_cnn
make_step = article_step
good_step = compute_loss_step
def raising(model):
    def step(x, y):
        raise ValueError("shapes do not match")
    return step
def uncompiled():
    return create_cnn(compile=False)
def flat_input():
    import keras
    model = keras.Sequential([keras.Input(shape=(32,)), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model
'''


@pytest.fixture
def cli_folder(tmp_path, monkeypatch):
    """A folder holding my_module.py, as the current folder (where the CLI looks first)."""
    (tmp_path / "my_module.py").write_text(CLI_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_module", raising=False)
    yield tmp_path
    sys.modules.pop("my_module", None)


def test_cli_usage_error_is_one_line_without_traceback_from_python_m(cli_folder):
    """The real entry point: exit status 2, one line on stderr, no traceback, nothing on stdout
    (and at once: a usage error is answered before TensorFlow is imported)."""
    result = subprocess.run([sys.executable, "-m", "helpers.doctor", "my_module:make_step"],
                            cwd=cli_folder, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == ("python -m helpers.doctor: error: the following arguments are "
                             "required: --model\n")
    assert result.stdout == ""


@pytest.fixture
def zoo_check_step(step_report, monkeypatch):
    """The command line's check_step answered with the zoo's report for the same model_fn and
    make_step (checked once, by test_every_zoo_step_gets_its_true_verdict): what is tested here
    is the command line around it (names loaded, MNIST passed on, checklist, exit status)."""
    import helpers.doctor.step

    def check_step(model_fn, make_step, x, y, *, batch_size):
        name = next(name for name, entry in STEPS.items()
                    if (entry.model_fn, entry.make_step) == (model_fn, make_step))
        assert x.shape == (100, 28, 28, 1) and y.shape == (100, 10) and batch_size == BATCH
        return step_report(name)
    monkeypatch.setattr(helpers.doctor.step, "check_step", check_step)


def test_cli_prints_the_checklist_and_exits_1_when_the_step_differs(cli_folder, zoo_check_step,
                                                                     capsys):
    assert main(["my_module:make_step", "--model", "my_module:model_fn", "--subset", "100"]) == 1
    out, err = capsys.readouterr()
    assert "DIFFERS from fit" in out and "[x] training" in out and "[x] mean_loss" in out
    assert err == ""


def test_cli_exits_0_when_the_step_matches(cli_folder, zoo_check_step, capsys):
    assert main(["my_module:good_step", "--model", "my_module:l2_model_fn",
                 "--subset", "100"]) == 0
    out, err = capsys.readouterr()
    assert "matches fit" in out and err == ""


@pytest.mark.parametrize("args, message", [
    (("nomod:make_step", "--model", "my_module:model_fn"), "cannot import module 'nomod'"),
    (("my_module:nope", "--model", "my_module:model_fn"), "has no 'nope'"),
    (("my_module:raising", "--model", "my_module:model_fn"),
     "your step raised ValueError: shapes do not match"),
    (("my_module:good_step", "--model", "my_module:uncompiled"), "uncompiled"),
    (("my_module:good_step", "--model", "my_module:flat_input"),
     "model_fn()'s model cannot take x (shape (28, 28, 1) per sample): it takes inputs of "
     "shape (None, 32)"),
    (("my_module:good_step",), "--model"),
    (("my_module:good_step", "--model", "my_module:model_fn", "--batch-size", "0"),
     "--batch-size 0"),
])
def test_cli_bad_input_is_one_line_and_exit_2(cli_folder, capsys, args, message):
    assert main([*args, "--subset", "100"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("python -m helpers.doctor: error: ") and err.count("\n") == 1
    assert message in err and out == ""
