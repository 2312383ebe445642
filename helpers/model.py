"""The article's small CNN, built reproducibly."""

from __future__ import annotations

import keras


def create_cnn(seed: int = 0, compile: bool = True) -> keras.Model:
    """Input(28, 28, 1) -> Conv2D(32, 3, relu) -> MaxPool -> Conv2D(64, 3, relu) -> MaxPool
    -> Flatten -> Dropout(0.5) -> Dense(10, softmax).

    `keras.utils.set_random_seed(seed)` comes first, so the same seed gives the same initial
    weights *and* the same dropout seed state (a SeedGenerator variable that is in
    `model.variables` but not in `get_weights()`). It also seeds Python, NumPy and TensorFlow
    globally, as Keras recommends for reproducible runs.
    """
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, kernel_size=3, activation="relu"),
            keras.layers.MaxPooling2D(pool_size=2),
            keras.layers.Conv2D(64, kernel_size=3, activation="relu"),
            keras.layers.MaxPooling2D(pool_size=2),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
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
