"""The article's small CNN, built reproducibly."""

from __future__ import annotations

import keras

from helpers import compat

ARTICLE_DROPOUT = 0.5  # the article's Dropout rate


def create_cnn(seed: int = 0, compile: bool = True, *, dropout: float = ARTICLE_DROPOUT,
               l2: float = 0.0) -> keras.Model:
    """Input(28, 28, 1) -> Conv2D(32, 3, relu) -> MaxPool -> Conv2D(64, 3, relu) -> MaxPool
    -> Flatten -> Dropout(`dropout`) -> Dense(10, softmax); with `l2` > 0 every kernel gets an
    L2 penalty of that factor (so that ``model.losses`` is not empty).

    `keras.utils.set_random_seed(seed)` comes first, so the same seed gives the same initial
    weights *and* the same dropout seed state (a SeedGenerator variable that is in
    `model.variables` but not in `get_weights()`). It also seeds Python, NumPy and TensorFlow
    globally, as Keras recommends for reproducible runs (under the JAX backend all but
    TensorFlow, which is then not imported: `helpers.compat.set_random_seed`).
    """
    compat.set_random_seed(seed)
    penalty = {"kernel_regularizer": keras.regularizers.L2(l2)} if l2 else {}
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, kernel_size=3, activation="relu", **penalty),
            keras.layers.MaxPooling2D(pool_size=2),
            keras.layers.Conv2D(64, kernel_size=3, activation="relu", **penalty),
            keras.layers.MaxPooling2D(pool_size=2),
            keras.layers.Flatten(),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(10, activation="softmax", **penalty),
        ],
        name="article_cnn",
    )
    if compile:
        compile_like_article(model)
    return model


def compile_like_article(model: keras.Model, optimizer="adam") -> keras.Model:
    """adam, categorical_crossentropy, accuracy -- the article's compile call."""
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    return model
