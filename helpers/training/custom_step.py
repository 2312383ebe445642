"""Keep fit(), change its step: a ``keras.Model`` whose ``train_step``/``test_step`` are the
matched step, written with Keras 3's public API, and one customization fit's options cannot
express -- per-layer gradient clipping -- in both forms, the override and the tape loop.

- `MatchedStepModel`: Keras' own step (keras/src/backend/tensorflow/trainer.py:
  ``TensorFlowTrainer.train_step`` and ``test_step``) spelled with public calls:
  ``keras.utils.unpack_x_y_sample_weight``, ``self(x, training=True)`` inside a
  ``GradientTape``, ``self.compute_loss`` with the sample weights, the loss tracker updated,
  ``self.optimizer.scale_loss``, the gradient, ``self.optimizer.apply`` and
  ``self.compute_metrics``; ``test_step`` the same in inference mode, without the update. Trained
  with fit it gives plain fit's History and weights bit for bit, also with ``sample_weight`` and
  ``class_weight`` (tests/test_custom_step.py). The one private piece is the loss tracker
  (`helpers.compat.loss_tracker`).
- `LayerClippedStepModel`: the same step with each layer's gradients clipped to a joint norm
  (`clip_by_layer`). fit's ``clipnorm`` clips every variable on its own and ``global_clipnorm``
  all of them together; a per-layer norm (kernel and bias as one) needs a custom step.
- `layer_clipped_train_step`: the same customization as a tape-loop step for
  ``train_matched(make_step=...)``; both forms give the same History and weights bit for bit.
- `with_step`: the article's CNN (same layers, same seeded initial weights as `create_cnn`) as an
  instance of one of these classes, compiled like the article.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from helpers.compat import loss_tracker, unscale_loss_for_distribution
from helpers.model import compile_like_article, create_cnn
from helpers.training.step import TrainStep, tape_train_step


def clip_by_layer(model: keras.Model, gradients, max_norm: float) -> list:
    """`gradients` (one per ``model.trainable_variables``) with each layer's scaled down
    together, as ``tf.clip_by_global_norm`` does, so that their joint L2 norm is at most
    `max_norm`; layers already within it are left unchanged."""
    index = {id(variable): i for i, variable in enumerate(model.trainable_variables)}
    clipped = list(gradients)
    for layer in model.layers:
        positions = [index[id(variable)] for variable in layer.trainable_variables]
        if positions:
            layer_clipped, _ = tf.clip_by_global_norm([clipped[i] for i in positions], max_norm)
            for i, gradient in zip(positions, layer_clipped):
                clipped[i] = gradient
    return clipped


class MatchedStepModel(keras.Model):
    """fit's own step written with Keras 3's public API (TensorFlow backend).

    Subclasses change the step by overriding `transform_gradients`; everything fit does around
    the step -- callbacks, the progress bar, shuffling, sample and class weights,
    ``steps_per_execution``, validation -- stays fit's.
    """

    def transform_gradients(self, gradients):
        """The gradients the optimizer applies; unchanged here. Under a LossScaleOptimizer they
        are those of the scaled loss."""
        return gradients

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                     training=True)
            self._update_loss_tracker(loss, x)
            # The identity unless the optimizer is a LossScaleOptimizer (mixed precision), whose
            # apply() unscales the gradients again.
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(self.transform_gradients(gradients), self.trainable_variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                 training=False)
        self._update_loss_tracker(loss, x)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _update_loss_tracker(self, loss, x):
        # As fit: each batch's loss weighted by its number of samples, so that the epoch's
        # "loss" is a per-sample mean even with a partial last batch, and multiplied back by the
        # number of replicas that Keras 3.15 divides it by under a tf.distribute strategy
        # (keras/src/losses/loss.py: reduce_values) -- the identity on one device and before 3.15.
        batch_size = tf.shape(next(i for i in keras.tree.flatten(x) if i is not None))[0]
        loss_tracker(self).update_state(unscale_loss_for_distribution(loss),
                                        sample_weight=batch_size)


class LayerClippedStepModel(MatchedStepModel):
    """`MatchedStepModel` with each layer's gradients clipped to a joint norm `max_norm`."""

    def __init__(self, *args, max_norm: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_norm = max_norm

    def transform_gradients(self, gradients):
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # the gradients here are the scaled loss's: clipping them would clip at another norm
            raise NotImplementedError("per-layer clipping under loss scaling (mixed_float16): "
                                      "the gradients it would see are scaled")
        return clip_by_layer(self, gradients, self.max_norm)


def with_step(model_class: type[MatchedStepModel], seed: int = 0, **kwargs) -> MatchedStepModel:
    """The article's CNN built by ``create_cnn(seed)`` -- same layers, same initial weights and
    Dropout seed state -- as a functional `model_class`, compiled like the article."""
    base = create_cnn(seed=seed, compile=False)
    model = model_class(inputs=base.inputs, outputs=base.outputs, name=base.name, **kwargs)
    return compile_like_article(model)


def layer_clipped_train_step(model: keras.Model, x, y, max_norm: float) -> TrainStep:
    """The tape loop's matched step (helpers.training.matched_train_step) with `clip_by_layer`
    between the gradient and the update: `LayerClippedStepModel`'s step as a loop step."""
    return tape_train_step(
        model, x, y, dropout=True, mean_loss=True,
        transform_gradients=lambda gradients: clip_by_layer(model, gradients, max_norm))


def layer_clipped(max_norm: float):
    """``make_step`` for ``train_matched``: `layer_clipped_train_step` with `max_norm`."""
    return functools.partial(layer_clipped_train_step, max_norm=max_norm)
