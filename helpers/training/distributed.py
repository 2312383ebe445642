"""The matched tape loop under ``tf.distribute``: equal to fit where fit runs, and on several
workers, where Keras 3's fit does not (keras-team/keras#20585).

The command line that runs it on several worker processes or logical CPUs is
`helpers.tooling.launcher`.

`train_distributed` trains a compiled model, built under ``strategy.scope()``, the way fit does
under that strategy (Keras 3.15.1, TensorFlow backend). Each replica runs fit's own step, the
one `helpers.training` runs on one device (``matched_train_step``; `Evaluator` for validation),
and the epochs are the one-device loop's (`helpers.training.Trainer`), so the loss, the metrics
and the History keys are the compiled ones. The Keras source below is
keras/src/backend/tensorflow/trainer.py unless another file is named:

- the dataset is distributed by the strategy (``experimental_distribute_dataset``, as fit's
  ``TFEpochIterator.__init__``) and each step is ``strategy.run`` inside one ``tf.function``
  (``TensorFlowTrainer._make_function``: ``one_step_on_data``) on the iterator's next batch
  (``multi_step_on_iterator``);
- the compiled loss and metrics are built under the strategy's scope before the first step, as
  fit builds them (``TensorFlowTrainer._symbolic_build`` calls Keras' own inside
  ``strategy.scope()``), so their variables are the strategy's;
- the loss of each replica is ``compute_loss`` (keras/src/trainers/trainer.py:
  ``Trainer.compute_loss``), which comes out as its own batch mean times ``1 / replicas``: the
  compiled Loss object scales itself inside a replica context (keras/src/losses/loss.py:
  ``Loss.__call__`` calls ``scale_loss_for_distribution``), and
  ``TensorFlowTrainer._aggregate_additional_loss`` scales each of ``model.losses`` the same
  way. The optimizer then *sums* the replicas' gradients (keras/src/backend/tensorflow/
  optimizer.py: ``TFOptimizer._all_reduce_sum_gradients``), so the update is the mean of the
  replicas' batch-mean gradients;
- the model's loss tracker gets that loss unscaled again, weighted by the replica's batch size
  (``TensorFlowTrainer.train_step``; keras/src/losses/loss.py:
  ``unscale_loss_for_distribution``), and the compiled metrics are updated by
  ``compute_metrics``; metric variables are ``on_read`` variables aggregated by ``sum``
  (keras/src/metrics/metric.py: ``Metric.add_variable``), so reading a result outside the
  replicas adds up every replica's totals and counts;
- validation is fit's ``test_step`` (``training=False``, ``TensorFlowTrainer.test_step``) over
  the distributed validation set.

The partial last batch: the strategy splits every global batch as evenly as it can, the first
replicas taking ``ceil(n / replicas)`` samples and the last ones the rest, so at global batch 64
on 2 replicas a last batch of 34 becomes 17 + 17 and one of 33 becomes 17 + 16. fit gives each
replica's *mean* the same weight, so on an uneven split its step differs slightly from one
device's, which averages over the whole batch. This loop does exactly what fit does; with every
batch split evenly both agree with one device (tests/test_distributed.py). A batch smaller than
the number of replicas (a last batch of 1 here) leaves a replica with no samples, and then
TensorFlow 2.21's CPU convolution fails ("input depth must be evenly divisible by filter depth:
1 vs 32") -- under fit and this loop alike, in training and in validation: choose sizes whose
remainder is 0 or at least the number of replicas.

Splitting the CPU into logical devices (`split_cpu`) must happen before TensorFlow initializes
its devices, i.e. first in a fresh process.
"""

from __future__ import annotations

import itertools
import math

import tensorflow as tf

from helpers.compat import require_keras
from helpers.model import ARTICLE_DROPOUT, compile_like_article, create_cnn
from helpers.training.fit import check_orders, epoch_orders, ordered_dataset, require_compiled
from helpers.training.loop import Trainer
from helpers.training.step import Evaluator, TrainStep, matched_train_step, overrides

# ----------------------------------------------------------------------------------------------
# Devices and strategies (call before TensorFlow has initialized its devices)


def split_cpu(devices: int) -> list[str]:
    """Split the (first) physical CPU into `devices` logical devices; return their names.

    TensorFlow fixes its devices the first time it uses them, so this must run first in a process
    (tf.config.set_logical_device_configuration raises otherwise); called again with the same
    number, it changes nothing."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) != devices:  # else done already
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
        )
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def mirrored_strategy(replicas: int):
    """A MirroredStrategy over `replicas` logical CPU devices of this machine (see `split_cpu`)."""
    return tf.distribute.MirroredStrategy(split_cpu(replicas))


# ----------------------------------------------------------------------------------------------
# The step and the loop


def _check_strategy(model, strategy) -> None:
    require_compiled(model)
    require_keras("strategy")
    if model.distribute_strategy is not strategy:
        raise ValueError(
            f"model {model.name!r} was not built under this strategy's scope: create and compile "
            "it inside `with strategy.scope():` so that its variables, the optimizer's and the "
            "metrics' are replicated (as fit requires)"
        )
    for method in ("train_step", "test_step"):
        if overrides(model, method):  # fit would run the override; this loop is fit's default
            raise NotImplementedError(
                f"a custom {method} ({type(model).__name__}.{method}) under the distributed loop")
    # "auto" resolves to True on a GPU/TPU (keras/src/trainers/trainer.py:
    # Trainer._resolve_auto_jit_compile)
    if model.jit_compile:
        raise ValueError(
            f"model {model.name!r} is compiled with jit_compile=True, so fit would run its step "
            "under XLA; this loop does not: compile with jit_compile=False to compare them"
        )


def distributed_train_step(model, strategy, x, y) -> TrainStep:
    """fit's train step under `strategy` (``TensorFlowTrainer.train_step`` run by
    ``_make_function``): a function of a distributed iterator that takes the next global batch
    and runs `helpers.training.matched_train_step` (fit's ``train_step``) on every replica, with
    the model's own metrics (``model.metrics``). That step builds the compiled loss and metrics
    and the optimizer for data like `x`, `y` (shapes only); here under the strategy's scope, as
    fit does (``TensorFlowTrainer._symbolic_build``), so that their variables are the
    strategy's and the step is traced once."""
    _check_strategy(model, strategy)
    with strategy.scope():
        replica_step = matched_train_step(model, x, y)

    def train_step(iterator):
        strategy.run(replica_step.step, args=next(iterator))

    return TrainStep(train_step, replica_step.metrics)


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Shard by batch across workers (each worker takes its slice of every global batch), said
    explicitly: the dataset is made from tensors, not files, so there is nothing else to shard."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class DistributedEvaluator(Evaluator):
    """fit's validation under a strategy: `helpers.training.step.Evaluator`'s step -- fit's
    ``test_step`` on the model's own metrics -- run by ``strategy.run`` on each replica's part of
    every batch of `batch_size` (as ``TensorFlowTrainer._make_function`` runs it), the partial
    batch kept; its reset and ``val_*`` logs are `Evaluator`'s."""

    def __init__(self, model, strategy, x_val, y_val, batch_size):
        # not Evaluator.__init__: the batches come from a distributed dataset, not from slices
        self.model, self.metrics = model, tuple(model.metrics)
        dataset = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch_size)
        self.dataset = strategy.experimental_distribute_dataset(shard_by_data(dataset))
        self.steps = math.ceil(len(x_val) / batch_size)

        @tf.function
        def distributed_test_step(iterator):
            strategy.run(self.test_step, args=next(iterator))

        self.step = distributed_test_step

    def run_steps(self) -> None:
        iterator = iter(self.dataset)
        for _ in range(self.steps):
            self.step(iterator)


def train_distributed(model, strategy, train_data, val_data, *, epochs, batch_size, seed,
                      verbose=0, batch_orders=None, callbacks=None, initial_epoch=0):
    """The matched loop under `strategy`, with `helpers.training`'s signature and History keys.

    `batch_size` is the *global* batch, split over the replicas; the epoch orders are
    `epoch_orders(N, epochs, seed)` or exactly `batch_orders`, fed as
    `helpers.training.ordered_dataset` -- the dataset `train_fit` gives fit -- so fit and this
    loop see the same batches, through one iterator across all epochs. The `Trainer`'s
    ``tf.function`` takes the iterator and runs one step, traced once (the iterator's batch
    dimension is unknown, so the partial batch does not retrace). `callbacks` and
    `initial_epoch` mean what they mean to fit (`helpers.training.checkpoints.train_resumable`
    resumes with them): epoch e still trains on ``batch_orders[e]``."""
    x, y = train_data
    batch_orders = (epoch_orders(len(x), epochs, seed) if batch_orders is None
                    else check_orders(batch_orders, len(x), epochs))
    step = distributed_train_step(model, strategy, x, y)
    evaluate = DistributedEvaluator(model, strategy, *val_data, batch_size)
    steps = math.ceil(len(x) / batch_size)
    iterator = None
    if initial_epoch < epochs:  # as fit, the dataset starts at `initial_epoch`
        dataset = shard_by_data(ordered_dataset(x, y, batch_size, batch_orders[initial_epoch:]))
        iterator = iter(strategy.experimental_distribute_dataset(dataset))  # one for all epochs
    trainer = Trainer(model, step, lambda epoch: itertools.repeat((iterator,), steps),
                      steps=steps, evaluate=evaluate)
    return trainer.train(epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                         verbose=verbose)


def build_cnn(strategy, seed: int, dropout: float = ARTICLE_DROPOUT, l2: float = 0.0,
              optimizer="adam"):
    """The article's CNN and compile call (`helpers.model.create_cnn` with `dropout` and `l2`),
    made under `strategy`'s scope so that its variables, the optimizer's and the metrics' are the
    strategy's. A `dropout` of 0 turns Dropout off: each replica draws its own masks, which one
    device's batch cannot reproduce."""
    with strategy.scope():
        model = create_cnn(seed, compile=False, dropout=dropout, l2=l2)
        compile_like_article(model, optimizer=optimizer)
    return model
