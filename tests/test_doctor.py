"""helpers.doctor: every zoo step's verdict exactly (the right keys and no others), correct steps
in three styles get no differences, bad input is refused in one line; check_loop's answers for
the zoo's loops; the command line's exit codes."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest
import tensorflow as tf

from helpers import compat
from helpers.doctor import STEP_CHECKS, TOLERANCE, check_step
from helpers.doctor.step import DoctorError
from helpers.doctor.zoo import STEPS, article_cnn

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
