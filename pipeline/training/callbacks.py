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
