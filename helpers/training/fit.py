"""fit, and what fit makes of its arguments: the data every loop of `helpers.training` trains on.

- `train_fit`: ``model.fit`` as the article calls it, or on exactly given batch orders.
- `epoch_orders` / `EpochOrders`: the reproducible per-epoch shuffles fit and the loops share.
- `ordered_dataset` / `ordered_batches`: those orders as the data fit is given (a ``tf.data``
  dataset under the TensorFlow backend, a generator of NumPy batches under JAX).
- `arrays_like_fit`: ``validation_split``, ``class_weight`` and ``sample_weight`` as fit applies
  them, by Keras' own code (through `helpers.compat`).
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np

from helpers import compat

# fit's History keys for the article's compile call (one loss, accuracy), in this order
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def require_compiled(model: keras.Model) -> None:
    """Raise a ValueError unless `model` has been compiled with an optimizer and a loss."""
    if getattr(model, "optimizer", None) is None or model.loss is None:
        raise ValueError(
            f"model {model.name!r} is not compiled: call model.compile(optimizer=..., loss=..., "
            "metrics=['accuracy']) first; the training functions use its optimizer and loss"
        )


class EpochOrders:
    """A fresh, reproducible permutation of the samples for every epoch, drawn when first asked
    for: ``orders[e]`` is ``epoch_orders(N, epochs, seed)[e]`` for any number of epochs (for
    code that does not know in advance how many it will train, such as the throughput
    benchmark)."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self._rng = np.random.default_rng(seed)
        self._drawn: list[np.ndarray] = []

    def __getitem__(self, epoch: int) -> np.ndarray:
        while len(self._drawn) <= epoch:  # one draw per epoch, in epoch order
            self._drawn.append(self._rng.permutation(self.num_samples))
        return self._drawn[epoch]


def epoch_orders(num_samples: int, epochs: int, seed: int) -> np.ndarray:
    """A fresh, reproducible permutation of the samples for every epoch: shape (epochs, N)."""
    orders = EpochOrders(num_samples, seed)
    return np.stack([orders[epoch] for epoch in range(epochs)])


class FileOrder:
    """Every epoch's order without the ``"shuffle"`` fix: the samples as they come."""

    def __init__(self, num_samples: int):
        self.order = np.arange(num_samples)

    def __getitem__(self, epoch: int) -> np.ndarray:
        return self.order


def loop_orders(fixes, num_samples: int, batch_size: int, seed: int, batch_orders=None):
    """What a loop with these `fixes` trains each epoch, for the TensorFlow and the JAX loops:
    ``(orders, samples_per_epoch)``. With the ``"shuffle"`` fix ``orders[e]`` is a new
    permutation every epoch (`EpochOrders` from `seed`, or exactly `batch_orders`), else file
    order (`FileOrder`); with ``"partial_batch"`` every sample is trained, else the last
    ``num_samples % batch_size`` of each epoch's order are not."""
    if "shuffle" in fixes:
        orders = (EpochOrders(num_samples, seed) if batch_orders is None
                  else check_orders(batch_orders, num_samples))
    elif batch_orders is not None:
        raise ValueError("batch_orders needs the 'shuffle' fix: without it every epoch takes the "
                         "samples in file order")
    else:
        orders = FileOrder(num_samples)
    if "partial_batch" in fixes:
        return orders, num_samples
    return orders, num_samples // batch_size * batch_size


def check_orders(batch_orders, num_samples: int, epochs: int | None = None) -> np.ndarray:
    """`batch_orders` as an array, after checking its shape is (epochs, samples); `epochs` None
    takes any number of epochs."""
    batch_orders = np.asarray(batch_orders)
    rows = batch_orders.shape[0] if epochs is None and batch_orders.ndim == 2 else epochs
    if batch_orders.shape != (rows, num_samples):
        raise ValueError(
            f"batch_orders has shape {batch_orders.shape}; expected (epochs, samples) = "
            f"({'any' if epochs is None else epochs}, {num_samples})"
        )
    return batch_orders


class EpochTimer(keras.callbacks.Callback):
    """Records each epoch's wall time (fit's epoch, validation included) in ``seconds``."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.seconds = []


def ordered_dataset(x, y, batch_size: int, batch_orders, sample_weight=None):
    """All epochs' batches in the given order, one epoch after another, each epoch ending with its
    partial batch (with each sample's weight as a third element when `sample_weight` is given).
    Fed to fit with ``steps_per_epoch``, fit keeps one iterator across epochs
    (keras/src/trainers/epoch_iterator.py: ``EpochIterator._enumerate_iterator`` makes a new one
    only when none is left or ``steps_per_epoch`` is unset), so epoch e sees exactly
    ``batch_orders[e]``."""
    import tensorflow as tf  # here: under the JAX backend this module loads no TensorFlow

    arrays = tuple(tf.convert_to_tensor(a) for a in (x, y, sample_weight) if a is not None)
    per_epoch = [
        tf.data.Dataset.from_tensor_slices(order).batch(batch_size) for order in batch_orders
    ]
    indices = per_epoch[0]
    for epoch_indices in per_epoch[1:]:
        indices = indices.concatenate(epoch_indices)
    return indices.map(lambda idx: tuple(tf.gather(a, idx) for a in arrays))


def ordered_batches(x, y, batch_size: int, batch_orders, sample_weight=None):
    """`ordered_dataset` without TensorFlow: a generator of the same NumPy batches, for fit under
    the JAX backend. Fed to fit with ``steps_per_epoch``, it is read once across all epochs
    (keras/src/trainers/data_adapters/generator_data_adapter.py: ``GeneratorDataAdapter`` chains
    the batches it peeked at for their shapes back in front, ``peek_and_restore``)."""
    arrays = tuple(np.asarray(a) for a in (x, y, sample_weight) if a is not None)
    for order in batch_orders:
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            yield tuple(a[indices] for a in arrays)


def _single_array(name, value) -> None:
    if isinstance(value, (dict, list, tuple)):
        raise NotImplementedError(
            f"{name} is a {type(value).__name__}: the tape loops take one array of inputs and one "
            "of targets (a model with several inputs or outputs is not supported); fit would "
            "accept it, so it is refused rather than trained differently"
        )


def arrays_like_fit(train_data, val_data, *, sample_weight=None, class_weight=None,
                    validation_split: float = 0.0):
    """The training and validation arrays fit makes from these arguments, by Keras' own code
    (keras/src/backend/tensorflow/trainer.py: ``TensorFlowTrainer.fit``; keras/src/trainers/
    data_adapters/array_data_adapter.py: ``ArrayDataAdapter.__init__``):

    - `validation_split` (when `val_data` is None; else fit ignores it): the *last* fraction of
      ``(x, y, sample_weight)`` before any shuffling (`helpers.compat.train_validation_split`);
    - `class_weight` -> one weight per training sample
      (`helpers.compat.class_weight_to_sample_weights`), not given together with
      `sample_weight`. Validation samples get no class weights.

    Returns ``(x, y, sample_weight), val_data``: `sample_weight` None when unweighted,
    `val_data` None (no validation), ``(x, y)`` or ``(x, y, sample_weight)``.
    """
    x, y = train_data
    _single_array("x", x)
    _single_array("y", y)
    if sample_weight is not None and class_weight is not None:
        raise ValueError("You cannot `class_weight` and `sample_weight` at the same time "
                         "(as fit: ArrayDataAdapter.__init__)")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split={validation_split}; it must be in [0, 1)")
    if validation_split and val_data is None:
        (x, y, sample_weight), (x_val, y_val, sw_val) = compat.train_validation_split(
            (x, y, sample_weight), validation_split)
        val_data = (x_val, y_val) if sw_val is None else (x_val, y_val, sw_val)
    if class_weight is not None:
        sample_weight = compat.class_weight_to_sample_weights(y, class_weight)
    return (x, y, sample_weight), val_data


def train_fit(model, train_data, val_data, *, epochs, batch_size, seed, verbose=0,
              batch_orders=None, sample_weight=None, class_weight=None, validation_split=0.0,
              callbacks=None, initial_epoch=0):
    """``model.fit`` as the article calls it (NumPy arrays, ``shuffle=True``).

    With `batch_orders` (shape (epochs, N), e.g. from `epoch_orders`), fit instead trains on
    exactly those orders; that is how notebook 03 and the tests give fit and a tape loop the same
    batches. `seed` is not used here: fit's shuffling follows the global seed, which `create_cnn`
    sets. `sample_weight`, `class_weight` and `validation_split` are fit's; with `batch_orders`
    they are applied first by `arrays_like_fit` (fit's own code), so N is the number of
    training samples after the split. `val_data` may be None (no validation unless
    `validation_split`) or carry validation sample weights as a third array. `callbacks` and
    `initial_epoch` are fit's. Returns every History key fit logged (fit's names: one per
    compiled metric, and whatever the callbacks log, e.g. ``learning_rate`` from
    ReduceLROnPlateau), plus ``seconds``.
    """
    require_compiled(model)
    timer = EpochTimer()
    if batch_orders is None:
        x, y = train_data
        inputs = dict(x=x, y=y, batch_size=batch_size, shuffle=True, sample_weight=sample_weight,
                      class_weight=class_weight, validation_split=validation_split)
    else:
        (x, y, weights), val_data = arrays_like_fit(
            train_data, val_data, sample_weight=sample_weight, class_weight=class_weight,
            validation_split=validation_split)
        batch_orders = check_orders(batch_orders, len(x), epochs)
        ordered = ordered_batches if keras.backend.backend() == "jax" else ordered_dataset
        inputs = dict(
            # fit starts at `initial_epoch` but reads the dataset from its start
            x=ordered(x, y, batch_size, batch_orders[initial_epoch:], weights),
            steps_per_epoch=math.ceil(len(x) / batch_size),
            shuffle=False,  # the order is in the dataset
        )
    history = model.fit(
        **inputs, epochs=epochs, validation_data=val_data, validation_batch_size=batch_size,
        verbose=verbose, callbacks=[*(callbacks or ()), timer], initial_epoch=initial_epoch,
    )
    return {**{key: [float(v) for v in values] for key, values in history.history.items()},
            "seconds": timer.seconds}
