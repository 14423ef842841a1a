"""Training callbacks: learning-rate schedule, gradient clipping, throughput.

Each callback validates its arguments in `__init__` (a bad value raises `ValueError` naming
it) and writes what it did into `logs`, so `History`, `CSVLogger`, `TensorBoard` and the
progress bar see it without extra code. Keras hands the same `logs` dict to the callbacks in
list order and appends its own `History` and progress bar last, so put `CSVLogger` and
`TensorBoard` *after* these callbacks in the list.

- `WarmupCosineScheduler`: linear warm-up, then cosine / linear / inverse-sqrt decay. The
  step comes from `optimizer.iterations`, so a resumed run continues the schedule.
- `GradientClipping`: clips the global gradient norm inside the compiled train step (fixed
  bound, or AutoClip's adaptive percentile) and logs the norm before clipping.
- `Throughput`: tokens per second, FLOP/s, model FLOPs utilization and cumulative FLOPs.
- `training_flops_per_token`: the FLOP count behind `Throughput`.
- `TimeLeft`: prints an estimate of the time left after the first few steps.
- `StepLogger`, `StopOnNonFiniteLoss`, `FiniteCheckpoint`: the per-step log (`steps.csv`),
  the NaN stop and the last good checkpoint of every keras_llm run (`keras_llm.run_loop`).

These callbacks target the TensorFlow backend (the one `keras_llm` selects): the clipping
runs TensorFlow ops inside the train step and takes part in `tf.distribute`.
"""

import csv
import math
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_llm._io import save_keras_model
from keras_llm.config import DECAYS, ModelConfig


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _optimizer_of(callback):
    optimizer = getattr(callback.model, "optimizer", None)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            f"{type(callback).__name__} needs a model compiled with a Keras optimizer "
            f"(keras.optimizers.*). Received optimizer={optimizer!r}; call "
            "`model.compile(optimizer=keras.optimizers.AdamW(...), ...)` first."
        )
    return optimizer


def _iterations(optimizer):
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


# ------------------------------------------------------------------------------------------
# Learning-rate schedule
# ------------------------------------------------------------------------------------------


class WarmupCosineScheduler(keras.callbacks.Callback):
    """Linear warm-up to a peak learning rate, then decay to a minimum.

    Before each training batch the callback reads the optimizer's step counter
    (`optimizer.iterations`, the number of updates already applied) and sets
    `optimizer.learning_rate` to `learning_rate_at(step)`. With `n = step + 1` (the 1-based
    number of the update about to run), `W = warmup_steps`, `T = total_steps`:

    - warm-up, `n <= W`: `lr = peak * n / W` (the first update uses `peak / W`, update `W`
      uses the peak; a zero learning rate would waste a step);
    - decay, `W < n <= T`, with progress `p = (n - W) / (T - W)`:
      - `"cosine"`: `lr = min + (peak - min) * (1 + cos(pi * p)) / 2`;
      - `"linear"`: `lr = min + (peak - min) * (1 - p)`;
      - `"inverse_sqrt"`: the Transformer's `peak * sqrt(W / n)` shape, shifted and scaled
        so that it starts at the peak and reaches the minimum at `T`:
        `lr = min + (peak - min) * (r(n) - r(T)) / (1 - r(T))` with `r(n) = sqrt(max(W, 1) / n)`;
    - after `T` updates: `lr = min`.

    So update number `T` (step `T - 1`, the last one of a `T`-step run) uses exactly the
    minimum. Because the step is read from the optimizer, a run resumed with
    `initial_epoch > 0` on the same optimizer, or restored by
    `keras.callbacks.BackupAndRestore` (which restores `iterations`), continues the schedule
    where it stopped instead of warming up again.

    With `steps_per_execution=k > 1`, Keras calls batch hooks once per execution, so the
    learning rate is set once per `k` updates (to the schedule's value at the first of them)
    and held for the other `k - 1`; the schedule never drifts because it is keyed to the
    real step count. With `gradient_accumulation_steps`, `iterations` counts micro-batches,
    so give `warmup_steps` and `total_steps` in micro-batches.

    The learning rate is logged as `learning_rate` in batch logs (the value the batch used)
    and epoch logs (the value of the epoch's last update).

    Args:
        peak_learning_rate: float. Learning rate at the end of warm-up. Must be > 0.
        warmup_steps: int. Updates spent warming up linearly; `0` skips warm-up.
        total_steps: int. Update count at which the minimum is reached; must be
            `>= warmup_steps` and `>= 1`.
        min_learning_rate: float. Final learning rate, in `[0, peak_learning_rate]`.
            Defaults to `0.0`.
        decay: str. `"cosine"`, `"linear"` or `"inverse_sqrt"`. Defaults to `"cosine"`.

    Example:

    >>> schedule = WarmupCosineScheduler(1e-3, warmup_steps=10, total_steps=100)
    >>> schedule.learning_rate_at(9)  # the 10th update, end of warm-up
    0.001
    """

    def __init__(
        self,
        peak_learning_rate,
        warmup_steps,
        total_steps,
        min_learning_rate=0.0,
        decay="cosine",
    ):
        super().__init__()
        if not _is_number(peak_learning_rate) or not peak_learning_rate > 0:
            raise ValueError(
                "WarmupCosineScheduler: peak_learning_rate must be a number > 0. "
                f"Received peak_learning_rate={peak_learning_rate!r}."
            )
        if not _is_int(warmup_steps) or warmup_steps < 0:
            raise ValueError(
                "WarmupCosineScheduler: warmup_steps must be an integer >= 0. "
                f"Received warmup_steps={warmup_steps!r}."
            )
        if not _is_int(total_steps) or total_steps < 1:
            raise ValueError(
                "WarmupCosineScheduler: total_steps must be an integer >= 1. "
                f"Received total_steps={total_steps!r}."
            )
        if warmup_steps > total_steps:
            raise ValueError(
                "WarmupCosineScheduler: warmup_steps must not exceed total_steps. Received "
                f"warmup_steps={warmup_steps}, total_steps={total_steps}; lower warmup_steps "
                "or raise total_steps."
            )
        if not _is_number(min_learning_rate) or not 0 <= min_learning_rate <= peak_learning_rate:
            raise ValueError(
                "WarmupCosineScheduler: min_learning_rate must be in [0, peak_learning_rate="
                f"{peak_learning_rate}]. Received min_learning_rate={min_learning_rate!r}."
            )
        if decay not in DECAYS:
            raise ValueError(
                f"WarmupCosineScheduler: decay must be one of {list(DECAYS)}. "
                f"Received decay={decay!r}."
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_learning_rate = float(min_learning_rate)
        self.decay = decay

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "min_learning_rate": self.min_learning_rate,
            "decay": self.decay,
        }

    def learning_rate_at(self, step):
        """The learning rate of the update at 0-based `step` (a pure function).

        Args:
            step: int or array of ints. Updates already applied (`optimizer.iterations`).

        Returns:
            A Python float for a scalar `step`, else a float64 NumPy array of the same shape.
        """
        steps = np.asarray(step, dtype=np.float64)
        if np.any(steps < 0):
            raise ValueError(f"step must be >= 0. Received step={step!r}.")
        peak, low = self.peak_learning_rate, self.min_learning_rate
        warmup, total = self.warmup_steps, self.total_steps
        n = steps + 1.0
        warm = peak * n / max(warmup, 1)
        progress = np.clip((n - warmup) / max(total - warmup, 1), 0.0, 1.0)
        if self.decay == "cosine":
            fraction = 0.5 * (1.0 + np.cos(math.pi * progress))
        elif self.decay == "linear":
            fraction = 1.0 - progress
        else:  # inverse_sqrt
            anchor = max(warmup, 1)
            r_total = math.sqrt(anchor / total)
            if r_total >= 1.0:  # no room to decay (total <= max(warmup, 1))
                fraction = np.where(n > total, 0.0, 1.0)
            else:
                r = np.sqrt(anchor / np.minimum(np.maximum(n, anchor), total))
                fraction = (r - r_total) / (1.0 - r_total)
        decayed = low + (peak - low) * fraction
        rate = np.where(n <= warmup, warm, np.where(n > total, low, decayed))
        return float(rate) if rate.ndim == 0 else rate

    def on_train_begin(self, logs=None):
        optimizer = _optimizer_of(self)
        if not isinstance(optimizer.learning_rate, keras.Variable):
            raise ValueError(
                "WarmupCosineScheduler sets the optimizer's learning rate every step, but this "
                "optimizer computes it from a schedule or function "
                f"(learning_rate={optimizer.learning_rate!r}). Create the optimizer with a "
                "float learning rate, e.g. keras.optimizers.AdamW(learning_rate=1e-3)."
            )

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        optimizer.learning_rate = self.learning_rate_at(_iterations(optimizer))

    def _log(self, logs):
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )

    def on_train_batch_end(self, batch, logs=None):
        self._log(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._log(logs)


# ------------------------------------------------------------------------------------------
# Gradient clipping
# ------------------------------------------------------------------------------------------


def _squared_norm(gradient):
    """Squared L2 norm of a dense or sparse (`tf.IndexedSlices`) gradient, in float32."""
    if isinstance(gradient, tf.IndexedSlices):
        # Embedding gradients arrive as slices that may repeat a row; sum the repeats
        # before squaring so the norm is that of the dense gradient.
        gradient = tf.convert_to_tensor(gradient)
    gradient = tf.cast(gradient, tf.float32)
    return tf.reduce_sum(tf.square(gradient))


def _scale(gradient, factor):
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(factor, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


def _percentile(buffer, count, percentile):
    """NumPy's default (linear) percentile of the first `min(count, len(buffer))` entries."""
    capacity = buffer.shape[0]
    n = tf.maximum(tf.minimum(count, capacity), 1)
    valid = tf.range(capacity, dtype=count.dtype) < n
    ordered = tf.sort(tf.where(valid, buffer, tf.fill([capacity], np.inf)))
    position = tf.cast(n - 1, tf.float32) * (percentile / 100.0)
    low = tf.cast(tf.floor(position), tf.int32)
    high = tf.minimum(low + 1, tf.cast(n - 1, tf.int32))
    lower, upper = tf.gather(ordered, low), tf.gather(ordered, high)
    return lower + (position - tf.cast(low, tf.float32)) * (upper - lower)


class GradientClipping(keras.callbacks.Callback):
    """Clips the global gradient norm of every training step.

    With a fixed bound every step's gradients `g` are rescaled to
    `g * min(1, max_norm / ||g||)`, where `||g||` is the global L2 norm over all trainable
    variables. With `adaptive_percentile=p` (AutoClip, Seetharaman et al. 2020, "AutoClip:
    Adaptive Gradient Clipping for Source Separation Networks") the bound of each step is
    the p-th percentile (NumPy's linear interpolation) of all gradient norms seen so far,
    the current one included, so the first step is never clipped.

    How it is wired: a callback cannot see gradients, so at the start of `fit` this callback
    wraps the public `apply` method of the model's optimizer (the inner optimizer of a
    `keras.optimizers.LossScaleOptimizer`, so the norm is that of the unscaled gradients)
    and rebuilds the model's train function, so the clipping is traced into the compiled
    train step (also under `jit_compile=True`, mixed precision and `steps_per_execution`).
    The norm, the clipped flag and the AutoClip history live in `tf.Variable`s that the
    compiled step updates and the callback reads after each batch. At the end of `fit` the
    wrapper is removed and the train function rebuilt again, so a later `fit` without this
    callback does not clip. This works with any `keras.Model` compiled with a Keras
    optimizer whose `train_step` calls `optimizer.apply` or `optimizer.apply_gradients`
    (every built-in one does); a custom `train_step` that bypasses them is detected after the
    first batch and raises `RuntimeError` instead of silently not clipping.

    Under `tf.distribute` with several replicas, the norm is that of the gradient summed
    over replicas (what the optimizer applies); computing it costs one extra all-reduce of
    the gradients per step.

    Logs, in batch logs: `grad_norm`, the norm before clipping of the last update of the
    batch (of the last of `k` updates with `steps_per_execution=k`), and `clipped_fraction`,
    the share of this epoch's updates so far whose norm exceeded the bound. In epoch logs:
    `grad_norm` is the mean norm over the epoch's updates, `clipped_fraction` the epoch's
    share. In adaptive mode `clip_threshold` (the last bound used) is logged too.

    Limits: refuses optimizers that already clip (`clipnorm`, `global_clipnorm`,
    `clipvalue`; two clippers would compose silently) and `gradient_accumulation_steps`
    (the optimizer clips accumulated gradients itself; use its `global_clipnorm` instead).
    The AutoClip history is held by the callback, not saved in checkpoints: after a
    restart from a checkpoint it starts empty again (fixed-bound clipping resumes exactly).
    Steps a `LossScaleOptimizer` skips for non-finite gradients never reach the inner
    optimizer, so they are neither clipped nor counted.

    Args:
        max_norm: float or None. Bound on the global gradient norm. With
            `adaptive_percentile` it caps the adaptive bound; pass `None` there for
            AutoClip as published. Defaults to `1.0`.
        adaptive_percentile: float or None. Percentile in (0, 100] of the gradient norms
            seen so far to clip to. Defaults to `None` (fixed bound).
        history_size: int. Most recent norms kept for the percentile (AutoClip keeps all;
            a window keeps memory and sorting cost fixed). Defaults to `10000`.

    Example:

    >>> model.fit(data, callbacks=[GradientClipping(max_norm=1.0)])
    """

    def __init__(self, max_norm=1.0, adaptive_percentile=None, history_size=10_000):
        super().__init__()
        if adaptive_percentile is not None and (
            not _is_number(adaptive_percentile) or not 0 < adaptive_percentile <= 100
        ):
            raise ValueError(
                "GradientClipping: adaptive_percentile must be a number in (0, 100] or None. "
                f"Received adaptive_percentile={adaptive_percentile!r}."
            )
        if max_norm is None:
            if adaptive_percentile is None:
                raise ValueError(
                    "GradientClipping: max_norm=None needs adaptive_percentile (otherwise "
                    "nothing would be clipped). Received max_norm=None, "
                    "adaptive_percentile=None; pass max_norm=1.0 or adaptive_percentile=10."
                )
        elif not _is_number(max_norm) or not max_norm > 0 or not math.isfinite(max_norm):
            raise ValueError(
                "GradientClipping: max_norm must be a finite number > 0 (or None with "
                f"adaptive_percentile). Received max_norm={max_norm!r}."
            )
        if not _is_int(history_size) or history_size < 1:
            raise ValueError(
                "GradientClipping: history_size must be an integer >= 1. "
                f"Received history_size={history_size!r}."
            )
        self.max_norm = None if max_norm is None else float(max_norm)
        self.adaptive_percentile = (
            None if adaptive_percentile is None else float(adaptive_percentile)
        )
        self.history_size = int(history_size)
        self._state = None
        self._state_strategy = None
        self._target = None
        self._wrapper = None

    def get_config(self):
        return {
            "max_norm": self.max_norm,
            "adaptive_percentile": self.adaptive_percentile,
            "history_size": self.history_size,
        }

    # -- state --------------------------------------------------------------------------

    def _make_state(self, strategy):
        def variable(name, value, dtype):
            return tf.Variable(
                value,
                name=name,
                dtype=dtype,
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        with strategy.scope():
            state = {
                "last_norm": variable("last_norm", 0.0, tf.float32),
                "threshold": variable("threshold", 0.0, tf.float32),
                # This epoch's updates, clipped updates and sum of finite norms.
                "steps": variable("epoch_steps", 0.0, tf.float32),
                "clipped": variable("epoch_clipped", 0.0, tf.float32),
                "norm_sum": variable("epoch_norm_sum", 0.0, tf.float32),
                "finite_steps": variable("epoch_finite_steps", 0.0, tf.float32),
            }
            if self.adaptive_percentile is not None:
                state["history"] = variable(
                    "norm_history", tf.zeros([self.history_size]), tf.float32
                )
                state["count"] = variable("norm_count", 0, tf.int64)
        return state

    def _reset_epoch(self):
        for name in ("steps", "clipped", "norm_sum", "finite_steps"):
            self._state[name].assign(0.0)

    # -- the in-graph clipping ----------------------------------------------------------

    def _clip(self, grads, loss_scale_factor):
        """Returns the clipped gradients and updates the state; runs inside the train step."""
        state = self._state
        present = [g for g in grads if g is not None]
        summed = present
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # Sparse embedding gradients differ in row count between replicas (different
            # tokens, a short last batch), which a collective cannot sum: densify first.
            dense = [
                tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                for g in present
            ]
            summed = context.all_reduce(tf.distribute.ReduceOp.SUM, dense)
        norm = tf.sqrt(tf.add_n([_squared_norm(g) for g in summed]))
        if loss_scale_factor is not None:
            norm = norm / loss_scale_factor
        finite = tf.math.is_finite(norm)

        if self.adaptive_percentile is None:
            threshold = tf.constant(self.max_norm, tf.float32)
        else:
            count, history = state["count"], state["history"]
            slot = tf.math.floormod(count, self.history_size)
            updated = tf.where(tf.range(self.history_size, dtype=tf.int64) == slot, norm, history)
            # A non-finite norm is not recorded: it would poison every later percentile.
            history.assign(tf.where(finite, updated, history))
            count.assign_add(tf.cast(finite, tf.int64))
            threshold = _percentile(history, count, self.adaptive_percentile)
            if self.max_norm is not None:
                threshold = tf.minimum(threshold, self.max_norm)

        clipped = tf.logical_and(finite, norm > threshold)
        factor = tf.where(clipped, threshold / tf.where(clipped, norm, 1.0), 1.0)
        # Like Keras' own clipping, a non-finite norm turns the update into NaN instead of
        # hiding the problem behind a zero step.
        factor = tf.where(finite, factor, np.nan)

        state["last_norm"].assign(norm)
        state["threshold"].assign(threshold)
        state["steps"].assign_add(1.0)
        state["clipped"].assign_add(tf.cast(clipped, tf.float32))
        state["norm_sum"].assign_add(tf.where(finite, norm, 0.0))
        state["finite_steps"].assign_add(tf.cast(finite, tf.float32))
        return [_scale(g, factor) for g in grads]

    # -- installing on the optimizer -----------------------------------------------------

    def _clipping_optimizer(self):
        optimizer = _optimizer_of(self)
        target = optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            target = optimizer.inner_optimizer
        already = {
            name: getattr(target, name, None)
            for name in ("clipnorm", "global_clipnorm", "clipvalue")
            if getattr(target, name, None)
        }
        if already:
            settings = ", ".join(f"{k}={v}" for k, v in already.items())
            raise ValueError(
                f"GradientClipping: the optimizer already clips gradients ({settings}). Use "
                "one of the two: remove that argument from the optimizer, or drop the "
                "GradientClipping callback."
            )
        if getattr(target, "gradient_accumulation_steps", None):
            raise ValueError(
                "GradientClipping clips each optimizer.apply call, which with "
                "gradient_accumulation_steps="
                f"{target.gradient_accumulation_steps} is one micro-batch, not the "
                "accumulated update. Use the optimizer's global_clipnorm argument instead."
            )
        return target

    def on_train_begin(self, logs=None):
        target = self._clipping_optimizer()
        strategy = self.model.distribute_strategy
        if self._state is None or self._state_strategy is not strategy:
            self._state = self._make_state(strategy)
            self._state_strategy = strategy

        current = vars(target).get("apply")
        owner = getattr(current, "_keras_llm_gradient_clipping", None)
        if owner is not None:
            if owner is not self:
                warnings.warn(
                    "GradientClipping: replacing the clipping another GradientClipping "
                    "callback installed on this optimizer (a fit that ended in an error, or "
                    "two GradientClipping callbacks in one list; only this one is active).",
                    stacklevel=2,
                )
            current = current._keras_llm_previous
            self._restore(target, current)
        original = target.apply  # the class's method, or a wrapper someone else installed

        def apply(grads, trainable_variables=None):
            self._traced = True  # at trace time: the train step does reach the optimizer
            grads = list(grads)
            if any(g is not None for g in grads):
                grads = self._clip(grads, target.loss_scale_factor)
            return original(grads, trainable_variables)

        apply._keras_llm_gradient_clipping = self
        apply._keras_llm_previous = current
        target.apply = apply
        self._target, self._wrapper = target, apply
        # The cached train function may have been traced without the wrapper.
        self.model.make_train_function(force=True)
        self._traced = False
        self._checked = False

    @staticmethod
    def _restore(target, previous):
        if previous is None:
            del target.apply
        else:
            target.apply = previous

    def on_train_end(self, logs=None):
        target, self._target = self._target, None
        if target is not None and vars(target).get("apply") is self._wrapper:
            self._restore(target, self._wrapper._keras_llm_previous)
            # Drop the graph traced with clipping, so a later fit without it does not clip.
            self.model.make_train_function(force=True)
        self._wrapper = None

    def on_epoch_begin(self, epoch, logs=None):
        self._reset_epoch()

    def _read(self, name):
        return float(self._state[name].numpy())

    def on_train_batch_end(self, batch, logs=None):
        if not self._checked:
            if not self._traced:
                raise RuntimeError(
                    "GradientClipping saw no gradients in the first training batch: this "
                    f"model's train_step ({type(self.model).__name__}) does not call "
                    "optimizer.apply or optimizer.apply_gradients. Clip inside your "
                    "train_step, or set global_clipnorm on the optimizer instead."
                )
            self._checked = True
        steps = self._read("steps")
        if logs is not None:
            logs["grad_norm"] = self._read("last_norm")
            logs["clipped_fraction"] = self._read("clipped") / max(steps, 1.0)
            if self.adaptive_percentile is not None:
                logs["clip_threshold"] = self._read("threshold")

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        steps, finite = self._read("steps"), self._read("finite_steps")
        logs["grad_norm"] = self._read("norm_sum") / finite if finite else float("nan")
        logs["clipped_fraction"] = self._read("clipped") / steps if steps else float("nan")
        if self.adaptive_percentile is not None:
            logs["clip_threshold"] = self._read("threshold")


# ------------------------------------------------------------------------------------------
# Throughput
# ------------------------------------------------------------------------------------------


def training_flops_per_token(model_config, sequence_length=None, output_dim=None):
    """FLOPs of one training step (forward + backward) per token of a Transformer.

    `6 * N + 12 * num_layers * sequence_length * hidden_dim`, the count PaLM (Chowdhery et
    al. 2022, appendix B) uses to define model FLOPs utilization, where
    `N = num_layers * (4 * hidden_dim**2 + 2 * hidden_dim * intermediate_dim)
    + hidden_dim * output_dim` are the weights used in matrix multiplications (the
    attention projections, the feed-forward layers and the output head; embedding lookups
    are gathers and cost no FLOPs). A multiply-add is 2 FLOPs and the backward pass costs
    twice the forward, hence the 6. The second term is attention itself (`QK^T` and the
    weighted sum of values, full `sequence_length` context, as
    `keras.layers.MultiHeadAttention` computes it even under a causal mask; Kaplan et al.
    2020 count half of it). Biases, norms, softmax and activations are left out.

    Args:
        model_config: `keras_llm.ModelConfig`.
        sequence_length: int. Tokens per sequence in the batches. Defaults to
            `model_config.sequence_length`.
        output_dim: int. Width of the output head: the vocabulary for a causal LM, the
            number of classes for a classifier. Defaults to `model_config.vocabulary_size`.

    Returns:
        int, FLOPs per token.
    """
    if not isinstance(model_config, ModelConfig):
        raise ValueError(
            "training_flops_per_token needs a keras_llm.ModelConfig. "
            f"Received model_config={model_config!r}."
        )
    length = model_config.sequence_length if sequence_length is None else sequence_length
    width = model_config.vocabulary_size if output_dim is None else output_dim
    for name, value in (("sequence_length", length), ("output_dim", width)):
        if not _is_int(value) or value < 1:
            raise ValueError(
                f"training_flops_per_token: {name} must be an integer >= 1. "
                f"Received {name}={value!r}."
            )
    d, layers = model_config.hidden_dim, model_config.num_layers
    matmul_params = layers * (4 * d * d + 2 * d * model_config.intermediate_dim) + d * width
    return 6 * matmul_params + 12 * layers * length * d


def _model_config_of(model):
    """The `ModelConfig` of a keras_llm task model (`model.backbone`), or None."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return None
    for attribute in ("model_config", "config"):
        config = getattr(backbone, attribute, None)
        if isinstance(config, ModelConfig):
            return config
    try:
        values = backbone.get_config()
    except (AttributeError, NotImplementedError):
        return None
    known = {name: values[name] for name in ModelConfig.__dataclass_fields__ if name in values}
    try:
        return ModelConfig(**known)
    except (TypeError, ValueError):
        return None


class Throughput(keras.callbacks.Callback):
    """Logs tokens per second, FLOP/s, model FLOPs utilization and cumulative FLOPs.

    Tokens per update are `batch_size * sequence_length` (padding included: the model
    computes on it too). The number of updates between two batch hooks is read from
    `optimizer.iterations`, so `steps_per_execution > 1` is counted right. Time is wall
    clock (`time.perf_counter`) from `on_train_batch_begin` to `on_train_batch_end`, i.e.
    the train step including input fetching, excluding validation and other epoch-end work.
    The first batch of every `fit` is left out of the rates: it traces and compiles.

    Logs (batch logs: this batch; epoch logs: the epoch's measured batches together; NaN
    when nothing could be measured, so every row has every key):
    `tokens_per_second`, `flops_per_second`, `mfu` (`flops_per_second / peak_flops`, only
    when `peak_flops` is given) and `training_flops`, the cumulative training FLOPs of all
    updates so far (`iterations * batch_size * sequence_length * flops_per_token`, so it
    continues across resumes).

    Args:
        batch_size: int. Global batch size (all replicas together).
        sequence_length: int. Tokens per example in the training batches.
        peak_flops: float or None. Peak FLOP/s of the hardware running the job (all devices
            together, in the precision used). Defaults to `None` (no `mfu`).
        flops_per_token: float or None. Training FLOPs per token. `None` derives it with
            `training_flops_per_token` from a keras_llm model's `backbone` config (the
            output head is the vocabulary, or `model.num_classes` when the model has it);
            for other models pass it, or `training_flops_per_token(...)`, explicitly.
            Defaults to `None`.
    """

    def __init__(self, batch_size, sequence_length, peak_flops=None, flops_per_token=None):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("sequence_length", sequence_length)):
            if not _is_int(value) or value < 1:
                raise ValueError(
                    f"Throughput: {name} must be an integer >= 1. Received {name}={value!r}."
                )
        for name, value in (("peak_flops", peak_flops), ("flops_per_token", flops_per_token)):
            if value is not None and (not _is_number(value) or not value > 0):
                raise ValueError(
                    f"Throughput: {name} must be a number > 0 or None. Received {name}={value!r}."
                )
        self.batch_size = int(batch_size)
        self.sequence_length = int(sequence_length)
        self.peak_flops = None if peak_flops is None else float(peak_flops)
        self.flops_per_token = None if flops_per_token is None else float(flops_per_token)
        # The FLOPs per token in use: `flops_per_token`, or derived at the start of `fit`.
        self.resolved_flops_per_token = self.flops_per_token

    @property
    def tokens_per_step(self):
        return self.batch_size * self.sequence_length

    def get_config(self):
        return {
            "batch_size": self.batch_size,
            "sequence_length": self.sequence_length,
            "peak_flops": self.peak_flops,
            "flops_per_token": self.flops_per_token,
        }

    def on_train_begin(self, logs=None):
        _optimizer_of(self)
        if self.flops_per_token is None:
            config = _model_config_of(self.model)
            if config is None:
                raise ValueError(
                    "Throughput cannot derive FLOPs per token from this model "
                    f"({type(self.model).__name__} has no keras_llm `backbone` config). "
                    "Pass flops_per_token=..., e.g. "
                    "keras_llm.callbacks.training_flops_per_token(model_config, "
                    "sequence_length)."
                )
            output_dim = getattr(self.model, "num_classes", None)
            self.resolved_flops_per_token = float(
                training_flops_per_token(config, self.sequence_length, output_dim)
            )
        self._first_batch = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_tokens = 0.0
        self._epoch_seconds = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin_step = _iterations(self.model.optimizer)
        self._begin_time = time.perf_counter()

    def _rates(self, tokens, seconds):
        nan = float("nan")
        tokens_per_second = tokens / seconds if seconds > 0 else nan
        flops_per_second = tokens_per_second * self.resolved_flops_per_token
        rates = {"tokens_per_second": tokens_per_second, "flops_per_second": flops_per_second}
        if self.peak_flops is not None:
            rates["mfu"] = flops_per_second / self.peak_flops
        return rates

    def _training_flops(self):
        steps = _iterations(self.model.optimizer)
        return steps * self.tokens_per_step * self.resolved_flops_per_token

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self._begin_time
        steps = _iterations(self.model.optimizer) - self._begin_step
        tokens = steps * self.tokens_per_step
        if self._first_batch:  # tracing and compiling, not training speed
            self._first_batch = False
            tokens, seconds = 0.0, 0.0
        else:
            self._epoch_tokens += tokens
            self._epoch_seconds += seconds
        if logs is not None:
            logs.update(self._rates(tokens, seconds))
            logs["training_flops"] = self._training_flops()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._rates(self._epoch_tokens, self._epoch_seconds))
            logs["training_flops"] = self._training_flops()


def format_duration(seconds):
    """`75` -> `"1 min 15 s"`, `4000` -> `"1 h 7 min"`, `9.4` -> `"9 s"`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class TimeLeft(keras.callbacks.Callback):
    """Prints, once, an estimate of the training time left, after the first few steps.

    The first step of a `fit` traces and compiles, so timing starts after it; after
    `after_steps` more steps the mean step time gives the estimate for the steps left
    (`total_steps` minus `optimizer.iterations`, so a resumed run is counted right). Time
    spent in validation and evaluation is not included. `then` adds later work measured in
    this run's steps (e.g. a fine-tuning that follows pretraining), named by `then_label`;
    a callable is called when the estimate is made (the work may be known only by then).

    Args:
        total_steps: int. Optimizer steps the run makes in all.
        after_steps: int. Steps timed before the estimate. Defaults to `5`.
        label: str. What the run is, in the printed line. Defaults to `"training"`.
        then: float, or a callable returning one. Further work, in units of this run's
            step. Defaults to `0`.
        then_label: str. What the further work is. Defaults to `"the rest"`.
        print_fn: callable taking one string. Defaults to `print` (flushed, so the line
            shows at once in a piped log too).

    The estimate is also in `self.estimate` (a dict: `seconds_per_step`, `seconds_left`,
    `then_seconds`) once printed.
    """

    def __init__(self, total_steps, after_steps=5, label="training", then=0.0,
                 then_label="the rest", print_fn=None):
        super().__init__()
        for name, value in (("total_steps", total_steps), ("after_steps", after_steps)):
            if not _is_int(value) or value < 1:
                raise ValueError(
                    f"TimeLeft: {name} must be an integer >= 1. Received {name}={value!r}."
                )
        if not callable(then) and (not _is_number(then) or then < 0):
            raise ValueError(
                f"TimeLeft: then must be a number >= 0 or a callable. Received then={then!r}."
            )
        self.total_steps = int(total_steps)
        self.after_steps = int(after_steps)
        self.label = label
        self.then = then if callable(then) else float(then)
        self.then_label = then_label
        self.print_fn = print_fn or (lambda line: print(line, flush=True))
        self.estimate = None
        self._start = None

    def on_train_batch_end(self, batch, logs=None):
        if self.estimate is not None:
            return
        done = _iterations(self.model.optimizer)
        if self._start is None:  # the first step traced and compiled: start timing now
            self._start = (time.perf_counter(), done)
            return
        timed = done - self._start[1]
        if timed < self.after_steps and done < self.total_steps:
            return
        per_step = (time.perf_counter() - self._start[0]) / max(timed, 1)
        left = max(self.total_steps - done, 0) * per_step
        then = float(self.then()) if callable(self.then) else self.then
        self.estimate = {"seconds_per_step": per_step, "seconds_left": left,
                         "then_seconds": then * per_step}
        line = (f"  time left: about {format_duration(left)} of {self.label} "
                f"({per_step:.2f} s a step over {timed} steps, {self.total_steps - done} to go)")
        if then:
            line += f", then about {format_duration(then * per_step)} of {self.then_label}"
        self.print_fn(line)


class StepLogger(keras.callbacks.Callback):
    """Records loss, learning rate and gradient norm at every step into `steps.csv`."""

    KEYS = ("loss", "learning_rate", "grad_norm")

    def __init__(self, path, append=False):
        super().__init__()
        self.path = path
        self.append = append
        self.steps = {"step": [], **{k: [] for k in self.KEYS}}

    def on_train_begin(self, logs=None):
        # A resumed run reads the steps logged before the crash, once: a later `fit` call of
        # the same run (a phase) continues from the steps already held.
        if self.append and not self.steps["step"] and os.path.exists(self.path):
            with open(self.path) as f:
                for row in csv.DictReader(f):
                    self.steps["step"].append(int(row["step"]))
                    for key in self.KEYS:
                        value = row.get(key, "")
                        self.steps[key].append(float(value) if value else float("nan"))

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.steps["step"].append(step)
        for key in self.KEYS:
            value = logs.get(key)
            self.steps[key].append(float(value) if value is not None else float("nan"))

    def on_epoch_end(self, epoch, logs=None):
        self.write()

    def on_train_end(self, logs=None):
        self.write()

    def write(self):
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", *self.KEYS])
            for i, step in enumerate(self.steps["step"]):
                writer.writerow([step, *(self.steps[k][i] for k in self.KEYS)])


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and remembers the step."""

    def __init__(self):
        super().__init__()
        self.bad_step = None
        self.bad_loss = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.bad_loss = float(loss)
            self.model.stop_training = True


class FiniteCheckpoint(keras.callbacks.Callback):
    """Saves the model at each epoch end while the loss is finite: the last good checkpoint."""

    def __init__(self, path, stopper):
        super().__init__()
        self.path = path
        self.stopper = stopper

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if self.stopper.bad_step is None and loss is not None and math.isfinite(float(loss)):
            save_keras_model(self.model, self.path)  # the previous one stays if this fails


class PublishCheckpoint(keras.callbacks.Callback):
    """Moves a checkpoint written under a temporary name into place at each epoch end.

    Keras' `ModelCheckpoint` writes its file in place, so a crash or a full disk while it
    saves would leave half a model where the best one was. Pointed at `partial` instead, and
    followed by this callback, it never touches `path`: this renames `partial` over `path`
    (`os.replace`, atomic) once the save is complete.

    Args:
        partial: str. Where `ModelCheckpoint` writes (a `.keras` name beside `path`).
        path: str. The checkpoint readers load.
    """

    def __init__(self, partial, path):
        super().__init__()
        self.partial = partial
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        if os.path.exists(self.partial):
            os.replace(self.partial, self.path)
