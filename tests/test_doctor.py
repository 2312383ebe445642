"""helpers.doctor: every zoo step's verdict exactly (the right keys and no others), correct steps
in three styles get no differences, bad input is refused in one line; check_loop's answers for
the zoo's loops; the command line's exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from helpers import compat
from helpers.doctor import LOOP_CHECKS, STEP_CHECKS, TOLERANCE, check_loop, check_step
from helpers.doctor.step import DoctorError
from helpers.doctor.zoo import LOOP_MODEL, LOOPS, STEPS, article_cnn

ROOT = Path(__file__).resolve().parent.parent
BATCH = 64


@pytest.fixture(scope="module")
def data(mnist_small):
    x, y = mnist_small
    return x[:256], y[:256]


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_zoo_step_gets_its_true_verdict(data, name):
    entry = STEPS[name]
    if entry.pinned_only and not compat.supports("loss_scaling"):
        pytest.skip("loss scaling needs Keras 3.15")
    report = check_step(entry.model_fn, entry.make_step, *data, batch_size=BATCH)
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


def test_report_reads_as_a_checklist_with_numbers(data):
    entry = STEPS["article"]
    text = str(check_step(entry.model_fn, entry.make_step, *data, batch_size=BATCH))
    assert "DIFFERS from fit" in text
    assert "[x] training" in text and "[x] mean_loss" in text
    assert "Proof:" in text and "×" in text


def test_sgd_summed_loss_reports_the_batch_size_factor(data):
    def model_fn():
        model = article_cnn()
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss="categorical_crossentropy")
        return model
    report = check_step(model_fn, STEPS["summed_loss"].make_step, *data, batch_size=BATCH)
    assert report.differences == ("mean_loss",)
    assert report.scale == pytest.approx(BATCH, rel=1e-3)


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


def article_cnn_uncompiled():
    from helpers.model import create_cnn
    return create_cnn(seed=0, compile=False)


# ---- check_loop ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LOOPS))
def test_every_zoo_loop_gets_its_true_verdict(data, name):
    x, y = data
    report = check_loop(LOOP_MODEL, LOOPS[name].train, x[:200], y[:200], epochs=2,
                        batch_size=BATCH, validation_data=(x[200:], y[200:]))
    assert 200 % BATCH  # a partial batch to keep or drop
    assert report.differences == LOOPS[name].truth == LOOPS[name].expected(200, BATCH), str(report)
    assert set(report.differences) <= set(LOOP_CHECKS)


def test_loop_counts_are_measured(data):
    x, y = data
    article = check_loop(LOOP_MODEL, LOOPS["article"].train, x[:200], y[:200], epochs=2,
                         batch_size=BATCH)
    assert article.batch_sizes == ((BATCH,) * 3,) * 2  # 200 // 64 steps, no partial batch
    assert article.unseen == (200 - 3 * BATCH,) * 2 and article.repeated == (0, 0)
    assert article.file_order == 2 and article.training_modes == {None: 6}
    assert "[-] validation_training" in str(article)
    fit = check_loop(LOOP_MODEL, LOOPS["fit"].train, x[:200], y[:200], epochs=2,
                     batch_size=BATCH, validation_data=(x[200:], y[200:]))
    assert fit.batch_sizes == ((BATCH,) * 3 + (200 - 3 * BATCH,),) * 2
    assert fit.new_orders == 1 and fit.unseen == (0, 0)
    assert fit.validation_modes == {False: 2}
    assert all(sorted(order) == list(range(200)) for order in fit.orders)


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
from helpers.doctor.zoo import article_cnn, article_step, compute_loss_step
from helpers.model import create_cnn
model_fn = article_cnn
make_step = article_step
good_step = compute_loss_step
def raising(model):
    def step(x, y):
        raise ValueError("shapes do not match")
    return step
def uncompiled():
    return create_cnn(compile=False)
'''


def run_cli(tmp_path, *args):
    (tmp_path / "my_module.py").write_text(CLI_MODULE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "helpers.doctor", *args, "--subset", "100"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_cli_exit_codes_and_checklist(tmp_path):
    differs = run_cli(tmp_path, "my_module:make_step", "--model", "my_module:model_fn")
    assert differs.returncode == 1, differs.stderr
    assert "[x] training" in differs.stdout and "[x] mean_loss" in differs.stdout
    assert differs.stderr == ""  # no TensorFlow start-up lines
    matches = run_cli(tmp_path, "my_module:good_step", "--model", "my_module:model_fn")
    assert matches.returncode == 0, matches.stderr
    assert "matches fit" in matches.stdout


@pytest.mark.parametrize("args, message", [
    (("nomod:make_step", "--model", "my_module:model_fn"), "cannot import module 'nomod'"),
    (("my_module:nope", "--model", "my_module:model_fn"), "has no 'nope'"),
    (("my_module:raising", "--model", "my_module:model_fn"), "your step raised ValueError"),
    (("my_module:good_step", "--model", "my_module:uncompiled"), "uncompiled"),
    (("my_module:good_step",), "--model"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("name", ["keras_guide", "compute_loss"])
def test_a_tf_function_step_draws_fit_s_dropout_mask(data, name):
    """Both steps call the model with training=True once, from the same SeedGenerator state: a
    tf.function step then gives fit's update bit for bit, so it drew fit's Dropout mask."""
    entry = STEPS[name]
    report = check_step(entry.model_fn, entry.make_step, *data, batch_size=BATCH)
    assert report.max_difference == 0.0
