"""What the train stage shows and does between steps and epochs: the epoch line, a progress line inside
long epochs, and the freed memory handed back to the system (``runtime.malloc_trim_steps``)."""

from __future__ import annotations


def epoch_line(epoch: int, epochs: int, logs: dict[str, float], seconds: float, improved: bool) -> str:
    shown = [f"{name} {logs[name]:.4f}" for name in ("loss", "accuracy", "val_loss", "val_accuracy") if name in logs]
    width = len(str(epochs))
    return (f"train: epoch {epoch:>{width}}/{epochs}  " + "  ".join(shown)
            + f"  lr {logs['learning_rate']:.2g}  {seconds:.1f}s" + ("  *best" if improved else ""))


class BatchProgress:
    """Keras callback: a progress line every 15 s inside long epochs (silent for short ones)."""

    def __new__(cls, epoch: int, epochs: int, steps: int):
        import keras

        from pipeline.progress import Progress

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch_index, logs=None):
                self.progress = Progress(f"train: epoch {epoch + 1}/{epochs} batches", total=steps, every_s=15.0)

            def on_train_batch_end(self, batch, logs=None):
                self.progress.advance(1)

        return Callback()


def memory_trim(every: int | None) -> list:
    """``runtime.malloc_trim_steps``: a Keras callback handing the process's freed memory back to
    the system every ``every`` steps of an epoch; none when ``every`` is None."""
    if not every:
        return []
    import keras

    from pipeline import runtime

    class Callback(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % every == 0:
                runtime.release_free_memory()

    return [Callback()]


class WeightAverage:
    """``train.ema_decay``: an exponential moving average of the trainable weights, updated after every batch.

    Validation reads the averaged weights (swapped in for Keras's validation pass and back after it), and the
    best epoch keeps them, so the saved model is the average: it is less tied to where the last few batches of
    a small corpus left the weights. The decay ramps up as TensorFlow's ``ExponentialMovingAverage`` does
    (``min(decay, (1 + t) / (10 + t))`` at step ``t``), so the random initialisation is forgotten quickly.
    """

    def __init__(self, variables, decay: float):
        import tensorflow as tf

        self.variables = list(variables)
        self.decay = float(decay)
        self.steps = tf.Variable(0.0, dtype=tf.float32, trainable=False)
        self.shadow = [tf.Variable(v.value, trainable=False) for v in self.variables]
        self._held = [tf.Variable(v.value, trainable=False) for v in self.variables]

        @tf.function
        def update():
            self.steps.assign_add(1.0)
            decay_now = tf.minimum(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
            for shadow, variable in zip(self.shadow, self.variables, strict=True):
                shadow.assign(decay_now * shadow + (1.0 - decay_now) * tf.cast(variable.value, shadow.dtype))

        self.update = update

    def swap_in(self) -> None:
        for held, shadow, variable in zip(self._held, self.shadow, self.variables, strict=True):
            held.assign(variable.value)
            variable.assign(shadow)

    def swap_out(self) -> None:
        for held, variable in zip(self._held, self.variables, strict=True):
            variable.assign(held)

    def callback(self):
        import keras

        average = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                average.update()

            def on_test_begin(self, logs=None):
                average.swap_in()

            def on_test_end(self, logs=None):
                average.swap_out()

        return Callback()

    def items(self):
        """(key, value) pairs for a checkpoint: the averages and the step count (``ema_v0000``..., ``ema_steps``)."""
        import numpy as np

        yield "ema_steps", np.asarray(self.steps.numpy())
        for i, shadow in enumerate(self.shadow):
            yield f"ema_v{i:04d}", shadow.numpy()

    def restore(self, values: dict) -> bool:
        """The averages from a checkpoint's ``items``; False (nothing changed) when it has none or others."""
        keys = [f"ema_v{i:04d}" for i in range(len(self.shadow))]
        if "ema_steps" not in values or any(key not in values or values[key].shape != tuple(s.shape)
                                            for key, s in zip(keys, self.shadow, strict=True)):
            return False
        self.steps.assign(float(values["ema_steps"]))
        for key, shadow in zip(keys, self.shadow, strict=True):
            shadow.assign(values[key])
        return True
