"""helpers.training.custom_step: a train_step override trained with fit is plain fit, bit for bit; a
customization fit cannot express gives the same result as an override and as a tape loop.

640 training + 160 validation images, 2 epochs, the same initial weights (seeded) and batch
order (`epoch_orders`) everywhere; batch size 50 so that every epoch ends in a partial batch.
Unweighted, and with fit's ``sample_weight`` (validation weights too) or ``class_weight``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import max_difference

from helpers.model import create_cnn
from helpers.tooling.speed import dtype_policy
from helpers.training import epoch_orders, train_fit, train_matched, train_tape_loop
from helpers.training.custom_step import (
    LayerClippedStepModel,
    MatchedStepModel,
    clip_by_layer,
    layer_clipped,
    with_step,
)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EPOCHS = 2
BATCH_SIZE = 50
MODEL_SEED = 3
N_TRAIN = 640
MAX_NORM = 0.05  # small enough that most steps clip at least one layer
CLASS_WEIGHT = {0: 3.0, 1: 0.25, 7: 2.0}  # the classes left out keep weight 1, as in fit


def orders():
    return epoch_orders(N_TRAIN, EPOCHS, 1)


def history_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(np.subtract(a[k], b[k])))) for k in a if k != "seconds")


def trained(model, small_split, train=train_fit, **kwargs):
    initial = [v.numpy() for v in model.variables]
    history = train(model, *small_split, epochs=EPOCHS, batch_size=BATCH_SIZE, seed=0,
                    batch_orders=orders(), **kwargs)
    return dict(history=history, initial=initial, variables=[v.numpy() for v in model.variables],
                optimizer=[v.numpy() for v in model.optimizer.variables], model=model)


@pytest.fixture(scope="module")
def runs(small_split):
    return {
        "fit": trained(create_cnn(seed=MODEL_SEED), small_split),
        "override": trained(with_step(MatchedStepModel, seed=MODEL_SEED), small_split),
        "clipped override": trained(
            with_step(LayerClippedStepModel, seed=MODEL_SEED, max_norm=MAX_NORM), small_split),
        "clipped loop": trained(create_cnn(seed=MODEL_SEED), small_split, train=train_matched,
                                make_step=layer_clipped(MAX_NORM)),
    }


def compile_weighted(model):
    """The article's compile call plus a weighted accuracy, so that the weights reach the metrics
    as well as the loss."""
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  weighted_metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def weighted_runs(small_split):
    """Plain fit and the override, each with fit's sample_weight (and validation weights) and
    with its class_weight. With ``batch_orders``, `train_fit` turns class_weight into per-sample
    weights with fit's own function (helpers.training.arrays_like_fit), so in both cases the step
    gets batches ``(x, y, sample_weight)``, as fit's data adapter hands them over."""
    (x, y), (x_val, y_val) = small_split
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.2, 2.0, len(x)).astype(np.float32)
    weighted_val = (x_val, y_val, rng.uniform(0.2, 2.0, len(x_val)).astype(np.float32))
    options = {"sample_weight": dict(sample_weight=weights),
               "class_weight": dict(class_weight=CLASS_WEIGHT)}
    models = {"fit": lambda: create_cnn(seed=MODEL_SEED, compile=False),
              "override": lambda: with_step(MatchedStepModel, seed=MODEL_SEED)}
    return {
        (option, form): trained(
            compile_weighted(make()),
            ((x, y), weighted_val if option == "sample_weight" else (x_val, y_val)), **kwargs)
        for option, kwargs in options.items()
        for form, make in models.items()
    }


def test_override_starts_where_fit_starts(runs):
    assert max_difference(runs["fit"]["initial"], runs["override"]["initial"]) == 0.0
    # the same layers in the same order (their names differ: Keras numbers repeated names;
    # the functional model lists its InputLayer, the Sequential one does not)
    def layer_types(model):
        return [type(layer) for layer in model.layers
                if not isinstance(layer, keras.layers.InputLayer)]

    assert layer_types(runs["override"]["model"]) == layer_types(runs["fit"]["model"])


def test_train_step_override_is_plain_fit_exactly(runs):
    fit, override = runs["fit"], runs["override"]
    assert max_difference(fit["initial"], fit["variables"]) > 0.0  # training moved the weights
    assert history_difference(fit["history"], override["history"]) == 0.0
    assert max_difference(fit["variables"], override["variables"]) == 0.0
    assert max_difference(fit["optimizer"], override["optimizer"]) == 0.0


def test_test_step_override_is_plain_evaluate_exactly(runs, small_split):
    _, (x_val, y_val) = small_split
    plain = runs["fit"]["model"].evaluate(x_val, y_val, batch_size=BATCH_SIZE, verbose=0,
                                          return_dict=True)
    override = runs["override"]["model"].evaluate(x_val, y_val, batch_size=BATCH_SIZE, verbose=0,
                                                  return_dict=True)
    assert override == plain


@pytest.mark.parametrize("option", ["sample_weight", "class_weight"])
def test_override_is_plain_fit_with_weights(weighted_runs, option):
    fit, override = weighted_runs[option, "fit"], weighted_runs[option, "override"]
    assert "weighted_accuracy" in fit["history"]
    if option == "sample_weight":
        assert "val_weighted_accuracy" in fit["history"]
    assert history_difference(fit["history"], override["history"]) == 0.0
    assert max_difference(fit["variables"], override["variables"]) == 0.0
    assert max_difference(fit["optimizer"], override["optimizer"]) == 0.0


def test_weights_changed_training(runs, weighted_runs):
    """The weights are used: weighted training differs from unweighted training."""
    for option in ("sample_weight", "class_weight"):
        assert max_difference(runs["fit"]["variables"],
                              weighted_runs[option, "fit"]["variables"]) > 1e-3


def test_clipping_changed_training(runs):
    """The customization is active: clipped training differs from plain fit."""
    assert max_difference(runs["fit"]["variables"], runs["clipped override"]["variables"]) > 1e-3


def test_clipped_override_and_clipped_loop_agree_exactly(runs):
    override, loop = runs["clipped override"], runs["clipped loop"]
    assert history_difference(override["history"], loop["history"]) == 0.0
    assert max_difference(override["variables"], loop["variables"]) == 0.0
    assert max_difference(override["optimizer"], loop["optimizer"]) == 0.0


def test_clip_by_layer_bounds_each_layer_and_spares_small_ones():
    model = create_cnn(seed=0)
    conv1, conv2, dense = (layer for layer in model.layers if layer.trainable_variables)
    variables = model.trainable_variables
    in_dense = [any(v is w for w in dense.trainable_variables) for v in variables]
    # every conv gradient entry 1 (layer norms far above 1); the Dense layer's tiny
    gradients = [np.full(v.shape, 1e-4 if small else 1.0, np.float32)
                 for v, small in zip(variables, in_dense)]
    clipped = [np.asarray(g) for g in clip_by_layer(model, gradients, 1.0)]
    for layer in (conv1, conv2):
        positions = [i for i, v in enumerate(variables)
                     if any(v is w for w in layer.trainable_variables)]
        norm = np.sqrt(sum(np.sum(clipped[i].astype(np.float64) ** 2) for i in positions))
        assert norm == pytest.approx(1.0, rel=1e-6)
        # kernel and bias scaled by one factor per layer, not each to norm 1 on its own
        kernel, bias = (clipped[i] for i in positions)
        assert np.all(kernel == kernel.flat[0]) and np.all(bias == kernel.flat[0])
    for i, small in enumerate(in_dense):  # within the norm: untouched
        if small:
            np.testing.assert_array_equal(clipped[i], gradients[i])


def test_make_step_needs_the_step_fixes(small_split):
    with pytest.raises(ValueError, match="'dropout' and 'mean_loss'"):
        train_tape_loop(create_cnn(0), *small_split, epochs=1, batch_size=64, seed=0,
                        fixes=("shuffle", "partial_batch"), make_step=layer_clipped(1.0))


def test_layer_clipping_is_refused_under_loss_scaling(small_split):
    """Under mixed_float16 the step's gradients are the scaled loss's, so a per-layer clip would
    clip at another norm than asked: refused, as the tape loop refuses it."""
    (x, y), _ = small_split
    with dtype_policy("mixed_float16"):
        model = with_step(LayerClippedStepModel, seed=MODEL_SEED, max_norm=1.0)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        with pytest.raises(NotImplementedError, match="per-layer clipping under loss scaling"):
            model.fit(x[:BATCH_SIZE], y[:BATCH_SIZE], batch_size=BATCH_SIZE, epochs=1, verbose=0)
