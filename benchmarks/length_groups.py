"""Length groups (``model.word_buckets``) against one group, on the same real training batches.

``python -m benchmarks.length_groups [--prep DIR] [--batches 100] [--epochs 3] [--groups 4,1] [--infer-batch 256]``
(``--groups 4:padding,4`` compares where the groups are cut, ``model.word_bucket_cuts``)

Takes the first ``--batches`` batches of the training stream of a preprocessed corpus (default:
the IMDB split ``make bench`` preprocesses, ``artifacts/bench-imdb/preprocess``), then for each
group count builds the HAN (the defaults with dropout 0.3 and Adam, or ``--config``'s model and optimizer),
fits ``--epochs`` passes over those batches and times each pass, then one inference pass over the same
documents in batches of ``--infer-batch``, sorted by size (as ``make bench`` infers). All in one
process, their epochs taking turns (each variant's first, then each one's second, ...), with one thread per op
(as the bbc/imdb configs) and fed as the train stage feeds ``fit`` (no tf.data autotuning); the first pass
includes graph tracing and is reported but not used. Prints one JSON line per group count and the
ratios to the last one (default: 1 group).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.compare import bench_prep
from pipeline.config import ModelConfig, RuntimeConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.length_groups", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prep", type=Path, default=None,
                        help="a preprocess stage's output folder (default: the IMDB split `make bench` writes under HAN_ARTIFACTS_DIR)")
    parser.add_argument("--batches", type=int, default=100, help="training batches of 32 documents (default 100)")
    parser.add_argument("--epochs", type=int, default=3, help="passes over them per group count (default 3)")
    parser.add_argument("--groups", default="4,1", help="comma-separated group counts, each optionally with where the "
                        "groups are cut (model.word_bucket_cuts), e.g. 4:padding; the last is the baseline")
    parser.add_argument("--config", type=Path, default=None,
                        help="build each model with this config's model and optimizer settings (e.g. configs/imdb.yaml: "
                        "its dropout mode, lazy Adam), resolved for the corpus's training documents; default: "
                        "ModelConfig's defaults with dropout 0.3, and Adam")
    parser.add_argument("--infer-batch", type=int, default=256, help="documents per inference batch (default 256)")
    args = parser.parse_args(argv)
    args.prep = args.prep or bench_prep()

    from pipeline.runtime import apply_runtime

    apply_runtime(RuntimeConfig(intra_op_threads=1, malloc_arenas=2))  # as configs/bbc.yaml and imdb.yaml
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.config import load_config
    from pipeline.data.batching import without_autotune
    from pipeline.data.shards import TrainingStream, shard_paths
    from pipeline.model.han import build_han, compile_han, document_outputs, inference_function
    from pipeline.training.optimization import build_optimizer

    settings = load_config(args.config) if args.config else None

    paths = shard_paths(args.prep, "train")
    if not paths:
        print(f"error: no training shards in {args.prep}; run `make bench` (or the preprocess stage) first", file=sys.stderr)
        return 2
    train_documents = sum(len(np.load(path)["labels"]) for path in paths)
    stream = TrainingStream(paths, documents=train_documents, batch_size=32, bucket_batches=20, seed=42, epoch=0,
                            shuffle_buffer=10_000)
    batches = []
    for batch in stream.batches():
        batches.append(batch)
        if len(batches) == args.batches:
            break
    vocab_size = len(json.loads((args.prep / "vocab.json").read_text())["tokens"])
    classes = len(json.loads((args.prep / "labels.json").read_text()))
    count = sum(len(labels) for _, labels in batches)
    # The same documents as lists of sentence id arrays, for inference in larger batches.
    documents = [[sentence[sentence != 0] for sentence in row if sentence.any()] for tokens, _ in batches for row in tokens]
    signature = (tf.TensorSpec((None, None, None), tf.int32), tf.TensorSpec((None,), tf.int32))

    def epoch_data():
        dataset = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=signature)
        # As the train stage feeds fit: without tf.data's autotuning thread, whose join when an epoch's
        # iterator is destroyed held some epochs here for ~10 s outside their steps.
        return without_autotune(dataset.apply(tf.data.experimental.assert_cardinality(len(batches))))

    variants = []
    for variant in args.groups.split(","):
        groups, _, cuts = variant.partition(":")
        groups, cuts = int(groups), cuts or "count"
        keras.utils.set_random_seed(42)
        variant_settings = {"word_buckets": groups, "train_word_buckets": None, "word_bucket_cuts": cuts}
        if settings is None:
            config, optimizer = ModelConfig(dropout=0.3, **variant_settings).resolved(), None
        else:
            config = settings.model.resolved(train_documents=train_documents).model_copy(update=variant_settings)
            optimizer = build_optimizer(settings.train, len(batches))
        model = build_han(config, vocab_size, classes)
        trainer = compile_han(model, config, optimizer=optimizer)
        variants.append({"groups": groups, "cuts": cuts, "model": model, "trainer": trainer, "seconds": [],
                         "embedding_dropout": config.embedding_dropout, "optimizer": type(trainer.optimizer).__name__})
    # Epoch by epoch in turn (one epoch of each variant, then the next round), so that a slower or faster
    # spell of the machine falls on every variant alike.
    for _ in range(args.epochs):
        for variant in variants:
            started = time.perf_counter()
            variant["trainer"].fit(epoch_data(), epochs=1, verbose=0)
            variant["seconds"].append(time.perf_counter() - started)
    results = []
    for variant in variants:
        infer = inference_function(variant["model"])
        infer.warm_up(documents[: args.infer_batch])  # trace both ways it may run: whole, or packed
        started = time.perf_counter()
        document_outputs(infer, documents, args.infer_batch)
        infer_seconds = time.perf_counter() - started
        seconds = variant["seconds"]
        after_first = seconds[1:] or seconds
        result = {"groups": variant["groups"], "cuts": variant["cuts"], "embedding_dropout": variant["embedding_dropout"],
                  "optimizer": variant["optimizer"], "documents": count,
                  "epoch_seconds": [round(s, 2) for s in seconds],
                  "train_docs_per_s": round(count * len(after_first) / sum(after_first), 1),
                  "infer_docs_per_s": round(count / infer_seconds, 1)}
        results.append(result)
        print(json.dumps(result), flush=True)
    base = results[-1]
    for result in results[:-1]:
        print(f"{result['groups']} groups ({result['cuts']} cuts) / {base['groups']} ({base['cuts']}): training "
              f"{result['train_docs_per_s'] / base['train_docs_per_s']:.2f}x, inference "
              f"{result['infer_docs_per_s'] / base['infer_docs_per_s']:.2f}x ({count} documents, {args.batches} batches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
