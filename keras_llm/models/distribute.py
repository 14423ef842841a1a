"""`model.fit` / `evaluate` on several workers: a narrow fix of Keras 3.15's TF trainer.

Under `tf.distribute.MultiWorkerMirroredStrategy` with two or more workers, Keras 3.15.1's
TensorFlow trainer (`keras/src/backend/tensorflow/trainer.py`) fails in two places, before and
after the first step (upstream: keras-team/keras#20585 and #20329, open; no fix in Keras'
main branch as of December 2026):

1. `_maybe_symbolic_build` reduces the first input batch with a collective
   `strategy.reduce("MEAN", batch, axis=None)` only to learn its shapes; across workers the
   `(x, y)` tuple of `PerReplica` values cannot be reduced ("Attempt to convert a value
   (PerReplica ...").
2. After each step, `reduce_per_replica(logs, strategy, "auto")` becomes
   `strategy.reduce("MEAN", value, axis=0)` on the step's scalar logs ("Invalid reduction
   dimension 0 for input with 0 dimensions").

`MultiWorkerFix`, the first base of keras_llm's model classes, changes both, and only in
multi-worker mode (Keras' own test for that mode decides, so the fix is active exactly where
the broken code runs): the shapes come from the first local replica's batch, and each
step's logs get a leading worker axis of length 1, so that Keras' MEAN over axis 0 is the mean
over all replicas of all workers. Every worker then sees the same logs, so callbacks (the
NaN stop, the best-epoch checkpoint, early stopping) decide the same way on all of them.

A third gap is silent: a metric's variables are summed over the local replicas only when
Keras reads them at the end of an epoch or of `evaluate`, so each worker reported the accuracy
or F1 of its own half of the data. `get_metrics_result` here sums every metric variable over
all workers first (a collective `all_reduce` per variable), so `evaluate` and the `val_`
metrics that pick the best epoch are those of the whole data set, equal on every worker.

`tests/test_multi_worker.py::test_plain_keras_model_on_two_workers_still_fails` is a strict
expected failure on a plain `keras.Model`: the day it passes, Keras is fixed and this module
can go.
"""

import keras
import tensorflow as tf
from keras import tree

# Keras' own predicate for the code path that fails: MultiWorkerMirroredStrategy with more
# than one worker. Private, so checked at import: a Keras without it needs this module revised.
from keras.src.backend.tensorflow.trainer import _collective_all_reduce_multi_worker


def multi_worker_mode(strategy):
    """True when `strategy` is a `MultiWorkerMirroredStrategy` spanning several workers."""
    return strategy is not None and bool(_collective_all_reduce_multi_worker(strategy))


def _first_local(value, strategy):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _with_worker_axis(logs):
    return tree.map_structure(lambda v: tf.expand_dims(tf.convert_to_tensor(v), 0), logs)


_REDUCTIONS = {"sum": tf.distribute.ReduceOp.SUM, "mean": tf.distribute.ReduceOp.MEAN}


def _over_all_workers(variables, strategy):
    """The values of metric `variables` reduced over every replica of every worker (by each
    variable's own aggregation; others as this worker holds them)."""
    local_replicas = len(strategy.extended.worker_devices)
    reduced = []
    for variable in variables:
        if variable.aggregation not in _REDUCTIONS:
            reduced.append(tf.convert_to_tensor(variable.value))
            continue
        components = getattr(variable.value, "values", None) or (variable.value,)
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context, parts=components: tf.identity(
                parts[context.replica_id_in_sync_group % local_replicas]))
        reduced.append(strategy.reduce(_REDUCTIONS[variable.aggregation], per_replica, axis=None))
    return reduced


class MultiWorkerFix:
    """Mixin for `keras.Model` subclasses (listed first among the bases): makes `fit` and
    `evaluate` run under a multi-worker `MultiWorkerMirroredStrategy`; a no-op otherwise."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and multi_worker_mode(strategy):
            for _, _, batches in iterator:
                first = next(batches)
                data_batch = tree.map_structure(lambda v: _first_local(v, strategy), first)
                break
            iterator = None
        self._symbolic_building = True  # its metric reads need no collective
        try:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        finally:
            self._symbolic_building = False

    def get_metrics_result(self):
        strategy = self._distribute_strategy
        in_step = tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()
        if not multi_worker_mode(strategy) or in_step or getattr(self, "_symbolic_building", 0):
            return super().get_metrics_result()  # one worker, inside a step, or the build
        results = {}
        for metric in self.metrics:
            result = metric.stateless_result(_over_all_workers(metric.variables, strategy))
            results.update(result if isinstance(result, dict) else {metric.name: result})
        return results

    def train_step(self, data):
        logs = super().train_step(data)
        return _with_worker_axis(logs) if multi_worker_mode(self.distribute_strategy) else logs

    def test_step(self, data):
        logs = super().test_step(data)
        return _with_worker_axis(logs) if multi_worker_mode(self.distribute_strategy) else logs


def barrier(strategy):
    """Returns once every worker has called it (no-op outside multi-worker mode): what the
    chief wrote before it, every worker can read after it."""
    if multi_worker_mode(strategy):
        one = tf.function(lambda: strategy.run(
            lambda: tf.distribute.get_replica_context().all_reduce("SUM", tf.ones(()))))()
        strategy.experimental_local_results(one)[0].numpy()


def check_keras_model(model):
    """Raises if `model` would hit Keras' multi-worker bug (it lacks `MultiWorkerFix`)."""
    if not isinstance(model, MultiWorkerFix):
        raise TypeError(
            f"{type(model).__name__} cannot train under strategy='multi_worker' with Keras "
            f"{keras.__version__} (keras-team/keras#20585). Use a keras_llm model class, or "
            "add keras_llm.models.distribute.MultiWorkerFix as its first base class."
        )
