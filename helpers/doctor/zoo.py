"""A zoo of training steps and loops from real sources, each with its true verdict, shared by
notebook A4 and tests/test_doctor.py.

`STEPS`: name -> `ZooStep` (the step as its source writes it, adapted only to the article's CNN:
a softmax output, one-hot labels, ``categorical_crossentropy``); `truth` is the set of
`STEP_CHECKS` keys `check_step` must report. `LOOPS`: name -> `ZooLoop`, whole loops for
`check_loop`, with the true answer to each of its questions.
"""

from __future__ import annotations

import helpers.notebook.quiet_tensorflow  # noqa: F401  first: TensorFlow without start-up lines

# isort: split
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from helpers.model import compile_like_article, create_cnn


class ZooStep(NamedTuple):
    source: str  # where this way of writing a step comes from
    model_fn: Callable[[], keras.Model]
    make_step: Callable
    truth: tuple[str, ...]  # the STEP_CHECKS keys check_step must report
    pinned_only: bool = False  # needs Keras >= 3.15 (loss scaling, helpers.compat.KERAS_GATES)


def article_cnn() -> keras.Model:
    """The article's CNN, compiled like the article (adam, categorical_crossentropy)."""
    return create_cnn(seed=0)


def l2_cnn() -> keras.Model:
    """The article's CNN with an L2 penalty on every kernel, so model.losses is not empty."""
    return create_cnn(seed=0, l2=1e-3)


def batchnorm_cnn() -> keras.Model:
    """A small CNN with BatchNormalization (and no Dropout), compiled like the article."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(16, 3, use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ], name="batchnorm_cnn")
    return compile_like_article(model)


def mixed_float16_cnn() -> keras.Model:
    """The article's CNN built and compiled under the mixed_float16 policy (compile wraps its
    optimizer in a LossScaleOptimizer); the global policy is put back afterwards."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return create_cnn(seed=0)
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ---- the steps, as their sources write them ------------------------------------------------

def article_step(model):
    """The article: model(x) with training unset, the per-sample loss vector's gradient."""
    loss_fn = keras.losses.categorical_crossentropy  # per sample: a vector of batch_size losses
    optimizer = model.optimizer

    def step(x, y):
        with tf.GradientTape() as tape:
            predictions = model(x)
            loss = loss_fn(y, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return step


def keras_guide_step(model):
    """keras.io, "Writing a training loop from scratch in TensorFlow": its own optimizer and
    loss object, training=True, ``loss_value += sum(model.losses)``, in a tf.function."""
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    loss_fn = keras.losses.CategoricalCrossentropy()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss_value = loss_fn(y, logits)
            loss_value += sum(model.losses)
        grads = tape.gradient(loss_value, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        return loss_value
    return train_step


def handson_step(model):
    """handson-ml3 (Géron, chapter 12), the custom loop's step: training=True,
    ``tf.reduce_mean`` of the per-sample loss, ``tf.add_n([main_loss] + model.losses)``."""
    loss_fn = keras.losses.categorical_crossentropy
    optimizer = model.optimizer

    def step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            main_loss = tf.reduce_mean(loss_fn(y, y_pred))
            loss = tf.add_n([main_loss] + model.losses)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return step


def summed_loss_step(model):
    """training=True, but the loss summed over the batch (``tf.reduce_sum``)."""
    optimizer = model.optimizer

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(keras.losses.categorical_crossentropy(y, model(x, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
    return step


def forgot_losses_step(model):
    """A loss object's batch mean, training=True, but model.losses forgotten."""
    loss_fn = keras.losses.CategoricalCrossentropy()
    optimizer = model.optimizer

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
    return step


def unscaled_mixed_step(model):
    """model.compute_loss under mixed_float16, but no ``optimizer.scale_loss``."""
    optimizer = model.optimizer

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, training=True)
        optimizer.apply(tape.gradient(loss, model.trainable_variables),
                        model.trainable_variables)
    return step


def inference_bn_step(model):
    """compute_loss and the optimizer right, but model(x) without training=True on a
    BatchNormalization model: it normalizes with the moving statistics and never updates them."""
    optimizer = model.optimizer

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x)
            loss = model.compute_loss(x, y, y_pred)
        optimizer.apply(tape.gradient(loss, model.trainable_variables),
                        model.trainable_variables)
    return step


def last_batch_metrics_step(model):
    """A step that returns its own batch's loss, which its loop then reports as the epoch's
    (rather than the running mean over the epoch, as fit's History): a reporting bug, the
    update itself is fit's (Keras' own guide prints the last batch's loss this way)."""
    loss_fn = keras.losses.CategoricalCrossentropy()
    optimizer = model.optimizer

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) + sum(model.losses)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss
    return step


def compute_loss_step(model):
    """Correct, Keras 3's public API: compute_loss, scale_loss, optimizer.apply, tf.function."""
    optimizer = model.optimizer

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, training=True)
            scaled = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(scaled, model.trainable_variables),
                        model.trainable_variables)
        return loss
    return step


def train_step_override_step(model):
    """Correct: the model's own train_step (fit's), called as ``model.train_step((x, y))``."""
    return lambda x, y: model.train_step((x, y))


STEPS = {
    "article": ZooStep("the article (Medium): model(x), per-sample loss vector",
                       article_cnn, article_step, ("training", "mean_loss")),
    "keras_guide": ZooStep("keras.io guide: writing a training loop from scratch (TensorFlow)",
                           l2_cnn, keras_guide_step, ()),
    "handson_ml3": ZooStep("handson-ml3 ch. 12: custom training loop step",
                           l2_cnn, handson_step, ()),
    "summed_loss": ZooStep("tf.reduce_sum of the per-sample loss", article_cnn,
                           summed_loss_step, ("mean_loss",)),
    "forgot_model_losses": ZooStep("a loss object, model.losses forgotten (L2 model)", l2_cnn,
                                   forgot_losses_step, ("regularization_losses",)),
    "mixed_float16_unscaled": ZooStep("mixed_float16, no optimizer.scale_loss",
                                      mixed_float16_cnn, unscaled_mixed_step,
                                      ("loss_scaling",), pinned_only=True),
    "batchnorm_inference": ZooStep("BatchNormalization model, model(x) without training=True",
                                   batchnorm_cnn, inference_bn_step, ("training",)),
    "last_batch_metrics": ZooStep("reports the last batch's loss as the epoch's (step right)",
                                  article_cnn, last_batch_metrics_step, ()),
    "compute_loss": ZooStep("correct: compute_loss + scale_loss + optimizer.apply",
                            l2_cnn, compute_loss_step, ()),
    "train_step_override": ZooStep("correct: model.train_step((x, y))", article_cnn,
                                   train_step_override_step, ()),
}


# ---- whole loops, for check_loop ------------------------------------------------------------

class ZooLoop(NamedTuple):
    source: str
    train: Callable  # train(model, x, y, epochs, batch_size, validation_data=None)
    truth: tuple[str, ...]  # the LOOP_CHECKS keys check_loop must report

    def expected(self, num_samples: int, batch_size: int) -> tuple[str, ...]:
        """The truth for this data: no partial batch to drop when `batch_size` divides
        `num_samples`."""
        return tuple(key for key in self.truth
                     if key != "partial_batch" or num_samples % batch_size)


def unseeded_cnn() -> keras.Model:
    """The article's CNN with TensorFlow's global seed cleared afterwards, so that fit draws a
    new shuffle every epoch (under the global seed it repeats one: notebook 03)."""
    model = article_cnn()
    tf.random.set_seed(None)
    return model


def fit_loop(model, x, y, epochs, batch_size, validation_data=None):
    """fit itself, returning its History."""
    return model.fit(x, y, epochs=epochs, batch_size=batch_size,
                     validation_data=validation_data, verbose=0)


def article_loop(model, x, y, epochs, batch_size, validation_data=None):
    """The article: batches in file order, ``range(len(x) // batch_size)`` steps (the partial
    batch dropped), validation with model(x_val)."""
    step = article_step(model)
    for _ in range(epochs):
        for i in range(len(x) // batch_size):
            step(x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size])
        if validation_data is not None:
            model(validation_data[0])


def keras_guide_loop(model, x, y, epochs, batch_size, validation_data=None):
    """keras.io guide: ``Dataset.from_tensor_slices(...).shuffle(buffer_size=1024)
    .batch(batch_size)`` (reshuffled each iteration, partial batch kept), validation with
    ``model(x, training=False)``."""
    step = keras_guide_step(model)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(buffer_size=1024)
    dataset = dataset.batch(batch_size)
    for _ in range(epochs):
        for x_batch, y_batch in dataset:
            step(x_batch, y_batch)
        if validation_data is not None:
            for x_val in tf.data.Dataset.from_tensor_slices(validation_data[0]).batch(batch_size):
                model(x_val, training=False)


def handson_random_batch_loop(model, x, y, epochs, batch_size, validation_data=None):
    """handson-ml3 ch. 12: ``random_batch`` draws ``np.random.randint(len(X), size=batch_size)``
    (with replacement) for ``n_steps = len(X_train) // batch_size`` steps an epoch."""
    step = handson_step(model)
    rng = np.random.default_rng(0)

    def random_batch(features, labels):
        idx = rng.integers(len(features), size=batch_size)
        return features[idx], labels[idx]

    for _ in range(epochs):
        for _ in range(len(x) // batch_size):
            step(*random_batch(x, y))
        if validation_data is not None:
            model(validation_data[0], training=False)


def training_mode_validation_loop(model, x, y, epochs, batch_size, validation_data=None):
    """A shuffled loop that keeps the partial batch but validates with training=True (Dropout
    on in validation)."""
    step = compute_loss_step(model)
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start:start + batch_size]
            step(x[batch], y[batch])
        if validation_data is not None:
            model(validation_data[0], training=True)


def last_batch_metrics_loop(model, x, y, epochs, batch_size, validation_data=None):
    """The keras.io guide's loop with a step that returns its loss, reported per epoch from the
    last batch (as the guide prints it), where fit's History has the epoch's running mean: the
    samples and the update are fit's, the reported numbers are not."""
    step = last_batch_metrics_step(model)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(buffer_size=1024)
    losses = []
    for _ in range(epochs):
        for x_batch, y_batch in dataset.batch(batch_size):
            loss = step(x_batch, y_batch)
        losses.append(float(loss))  # the last batch's loss, not the epoch's mean
        if validation_data is not None:
            model(validation_data[0], training=False)
    return {"loss": losses}


LOOPS = {
    "fit": ZooLoop("model.fit itself", fit_loop, ()),
    "article": ZooLoop("the article (Medium)", article_loop, ("shuffle", "partial_batch")),
    "keras_guide": ZooLoop("keras.io guide: tf.data shuffle(1024).batch()", keras_guide_loop, ()),
    "handson_ml3": ZooLoop("handson-ml3 ch. 12: random_batch", handson_random_batch_loop,
                           ("partial_batch", "replacement")),
    "validation_in_training_mode": ZooLoop("validation with training=True",
                                           training_mode_validation_loop,
                                           ("validation_training",)),
    "last_batch_metrics": ZooLoop("the last batch's loss reported as the epoch's",
                                  last_batch_metrics_loop, ("running_mean_metrics",)),
}
LOOP_MODEL = unseeded_cnn  # the model every zoo loop trains
