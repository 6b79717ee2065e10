"""Where an IMDB training step spends its time: the word level's calls, loop steps and cells, and the rest.

    python -m benchmarks.training_split                  # 200 batches of the IMDB split `make bench` preprocesses
    python -m benchmarks.training_split --batches 400 --config configs/imdb.yaml

Issue #31 asks for the measured reason IMDB training stops below 4x the reference. Cutting the length groups
where padding costs least leaves 0.86x the word level's cells and trained 1.00x as fast with ``configs/imdb.yaml``
(``results/2026-12-06-padding-cuts-imdb-config.md``), so cells are not all there is. This splits a training
step, in one process, with the config's model and optimizer settings resolved for the corpus:

Everything runs on one thread (one op at a time, one thread per op), so that the step's time and the
word level's calls are the same core's seconds; the train stage runs the length groups side by side on the
cores, which this leaves out.

1. ``step_ms``: the mean training step (``fit`` over the first ``--batches`` batches of the training stream, fed
   as the train stage feeds it, the model trained with the config's training length groups); the first pass
   traces and is not counted, then ``--passes`` are;
2. the word level's training cost (distinct words, embedding and its dropout, word BiGRU, word attention,
   forward and backward, gradients of their weights), fitted like ``make bench-inference-split``'s on timed calls
   on ``rows x steps`` grids of ids drawn from the batches' own words (so each call has as many distinct words
   as real text has): ``seconds = call + steps x (step + rows x cell)``;
3. that cost applied to each batch's length groups as ``SplitByLength`` cuts them (rows and steps of each
   group), splitting the step into the word level per call / per loop step / per cell, and the rest (sentence
   level, loss, the optimizer's update, Keras' step);
4. the same cost at the reference HAN's shape (one call over 32 x 15 = 480 sentence rows x 40 steps): what
   our word level would cost stepping over a batch padded as the reference pads it.

Results go to ``benchmarks/results/<date>-training-split.json`` and ``.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compare import bench_prep, log
from benchmarks.inference_split import fit_word_cost, shown, split_by_cost, time_grid, write_results
from pipeline.config import PROJECT_ROOT

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "imdb.yaml"
GRID_ROWS = (16, 64, 128, 256)  # a training group holds tens to a few hundred sentences
GRID_STEPS = (5, 20, 40, 70)
REPEATS = 3
REFERENCE_SHAPE = (32 * 15, 40)  # benchmarks.reference_han: every document padded to 15 sentences x 40 words


def sentence_rows(tokens: np.ndarray) -> np.ndarray:
    """The real sentences of a ``(batch, sentences, words)`` batch, as ``GatherSentences`` passes them on."""
    rows = tokens.reshape(-1, tokens.shape[-1])
    return rows[(rows != 0).any(axis=1)]


def word_training_step(model):
    """One ``tf.function``: the word level of ``model`` forward and backward over ``(rows, steps)`` ids."""
    import tensorflow as tf

    names = {layer.name for layer in model.layers}
    embedding, dropout = model.get_layer("word_embedding"), model.get_layer("embedding_dropout")
    encoder, attention = model.get_layer("word_encoder"), model.get_layer("word_attention")
    distinct = model.get_layer("distinct_words") if "distinct_words" in names else None
    variables = [*embedding.trainable_variables, *encoder.trainable_variables, *attention.trainable_variables]

    @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32, name="sentence_ids")])
    def step(ids):
        mask = tf.not_equal(ids, 0)
        with tf.GradientTape() as tape:
            if distinct is None:
                states = encoder(dropout(embedding(ids), training=True), mask=mask, training=True)
            else:  # word-type dropout: the model embeds, drops out and projects each distinct word once
                words, index = distinct(ids)
                states = encoder(dropout(embedding(words), training=True), mask=mask, index=index, training=True)
            vectors, _ = attention(states, mask=mask, training=True)
            loss = tf.reduce_sum(vectors)
        grads = tape.gradient(loss, variables)
        return tf.add_n([tf.reduce_sum(g.values if isinstance(g, tf.IndexedSlices) else g) for g in grads])

    return step


def measure(batches: list[tuple[np.ndarray, np.ndarray]], model, trainer, *, passes: int = 2, rows=GRID_ROWS,
            steps=GRID_STEPS, repeats: int = REPEATS) -> dict[str, Any]:
    import tensorflow as tf

    from pipeline.data.batching import without_autotune

    signature = (tf.TensorSpec((None, None, None), tf.int32), tf.TensorSpec((None,), tf.int32))

    def epoch_data():
        dataset = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=signature)
        return without_autotune(dataset.apply(tf.data.experimental.assert_cardinality(len(batches))))

    trainer.fit(epoch_data(), epochs=1, verbose=0)  # traces
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        trainer.fit(epoch_data(), epochs=1, verbose=0)
        seconds.append(time.perf_counter() - started)
    step_s = sum(seconds) / (passes * len(batches))

    word_step = word_training_step(model)
    words = np.concatenate([tokens[tokens != 0] for tokens, _ in batches])  # the batches' word frequencies
    word_step(tf.constant(np.resize(words, (8, 8)), tf.int32))  # traces
    cost = fit_word_cost(time_grid(lambda ids: float(word_step(ids)), words, rows, steps, repeats))

    split = model.get_layer("split_by_length") if "split_by_length" in {layer.name for layer in model.layers} else None
    shapes = []
    for tokens, _ in batches:
        real = sentence_rows(tokens)
        if split is None:
            lengths = (real != 0).sum(axis=1)
            shapes.append((len(real), int(lengths.max()) if len(real) else 0))
            continue
        *groups, _ = split(tf.constant(real, tf.int32))
        shapes.extend((int(g.shape[0]), int(g.shape[1])) for g in groups if g.shape[0] and g.shape[1])
    parts = {k: v / len(batches) for k, v in split_by_cost(shapes, cost).items()}
    reference = split_by_cost([REFERENCE_SHAPE], cost)
    documents = sum(len(labels) for _, labels in batches)
    return {
        "batches": len(batches), "documents": documents, "passes": passes,
        "pass_seconds": [round(s, 3) for s in seconds], "step_ms": round(step_s * 1e3, 2),
        "train_docs_per_s": round(documents / (step_s * len(batches)), 1),
        "word_cost": {k: float(f"{v:.4g}") for k, v in cost.items()},
        "per_batch": {"groups": round(len(shapes) / len(batches), 2),
                      "steps": round(sum(s for _, s in shapes) / len(batches), 1),
                      "rows": round(sum(r for r, _ in shapes) / len(batches), 1),
                      "cells": round(sum(r * s for r, s in shapes) / len(batches), 1)},
        "word_level_ms": {k.removesuffix("_s") + "_ms": round(v * 1e3, 2) for k, v in parts.items()},
        "rest_ms": round((step_s - parts["predicted_s"]) * 1e3, 2),
        "reference_shape": {"rows": REFERENCE_SHAPE[0], "steps": REFERENCE_SHAPE[1],
                            **{k.removesuffix("_s") + "_ms": round(v * 1e3, 2) for k, v in reference.items()}},
    }


def report(result: dict[str, Any], command: str) -> str:
    cost, batch, word, ref = result["word_cost"], result["per_batch"], result["word_level_ms"], result["reference_shape"]
    step = result["step_ms"]

    def share(x: float, whole: float) -> str:
        return f"{x:.1f} ms ({x / whole:.0%})"

    return "\n".join([
        f"# Where an IMDB training step spends its time, {result['date']}", "",
        f"`{command}` on {result['batches']} training batches ({result['documents']:,} documents) of "
        f"`{result['prep']}`, with `{result['config']}`'s model and optimizer settings ({result['embedding_dropout']} "
        f"embedding dropout, {result['optimizer']}, {result['train_groups']} length groups cut by "
        f"{result['cuts']}), on one thread, nothing else running. Machine: {result['machine'].get('cpu', '?')}, "
        f"{result['machine'].get('cores', '?')} cores.", "",
        f"- a training step on one thread: {step:.1f} ms ({result['train_docs_per_s']:,.1f} docs/s; passes of "
        f"{', '.join(f'{s:.2f}' for s in result['pass_seconds'])} s after one that traced)",
        f"- the word level's training cost (forward and backward), fitted on {len(GRID_ROWS) * len(GRID_STEPS) * REPEATS} "
        f"timed calls on ids drawn from the batches' words (rows {', '.join(map(str, GRID_ROWS))} x steps {', '.join(map(str, GRID_STEPS))}): "
        f"{cost['call_s'] * 1e3:.3g} ms per call + {cost['step_s'] * 1e6:.3g} us per loop step + "
        f"{cost['cell_s'] * 1e9:.3g} ns per sentence per step",
        f"- each batch's length groups: {batch['groups']:.2f} groups, {batch['rows']:.0f} sentence rows, "
        f"{batch['steps']:.0f} loop steps, {batch['cells']:,.0f} cells on average",
        f"- so the word level is {share(word['predicted_ms'], step)} of the step: per call "
        f"{share(word['calls_ms'], step)}, per loop step {share(word['steps_ms'], step)}, per cell "
        f"{share(word['cells_ms'], step)}; the rest (sentence level, loss, optimizer update, Keras' step) "
        f"{share(result['rest_ms'], step)}",
        f"- the same word level at the reference's shape ({ref['rows']} rows x {ref['steps']} steps, one call): "
        f"{ref['predicted_ms']:.1f} ms (per call {ref['calls_ms']:.1f}, per step {ref['steps_ms']:.1f}, per cell "
        f"{ref['cells_ms']:.1f})",
        ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_split", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prep", type=Path, default=None, help="a preprocess folder (default: `make bench`'s IMDB one)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="model, optimizer and runtime settings (default configs/imdb.yaml)")
    parser.add_argument("--batches", type=int, default=200, help="training batches of the stream to time (default 200)")
    parser.add_argument("--passes", type=int, default=2, help="timed passes over them after the tracing one (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md (default: results/<date>-training-split)")
    args = parser.parse_args(argv)
    prep = args.prep or bench_prep()

    from pipeline.config import load_config
    from pipeline.data.shards import TrainingStream, shard_paths
    from pipeline.runtime import apply_runtime

    paths = shard_paths(prep, "train")
    if not paths:
        print(f"error: no training shards in {prep}; run `make bench` (or the preprocess stage) first", file=sys.stderr)
        return 2
    settings = load_config(args.config).resolved()
    # Before TensorFlow starts: one op at a time, each on one thread (the module docstring says why).
    apply_runtime(settings.runtime.model_copy(update={"intra_op_threads": 1, "inter_op_threads": 1}))
    import keras

    from pipeline.model.han import build_han, compile_han
    from pipeline.training.optimization import build_optimizer

    train_documents = sum(len(np.load(path)["labels"]) for path in paths)
    t = settings.train
    stream = TrainingStream(paths, documents=train_documents, batch_size=t.batch_size, bucket_batches=t.bucket_batches,
                            seed=settings.seed, epoch=0, shuffle_buffer=t.shuffle_buffer)
    batches = []
    for tokens, labels, *_ in stream.batches():
        batches.append((tokens, labels))
        if len(batches) == args.batches:
            break
    vocab_size = len(json.loads((prep / "vocab.json").read_text())["tokens"])
    classes = len(json.loads((prep / "labels.json").read_text()))
    model_settings = settings.model.resolved(train_documents=train_documents)
    groups = model_settings.train_word_buckets or model_settings.word_buckets  # the train stage trains with these
    model_settings = model_settings.model_copy(update={"word_buckets": groups, "train_word_buckets": None})
    keras.utils.set_random_seed(settings.seed)
    model = build_han(model_settings, vocab_size, classes)
    trainer = compile_han(model, model_settings, optimizer=build_optimizer(t, len(batches)))
    log(f"training split: {len(batches)} batches from {prep}, {groups} length groups")
    result = measure(batches, model, trainer, passes=args.passes)
    result.update(prep=shown(prep), config=shown(args.config), embedding_dropout=model_settings.embedding_dropout,
                  optimizer=type(trainer.optimizer).__name__, train_groups=groups, cuts=model_settings.word_bucket_cuts)
    return write_results(result, report, "training-split", argv, args.out)


if __name__ == "__main__":
    sys.exit(main())
