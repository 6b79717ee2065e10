"""How much of the word level's work in training is padding, and so how much packing training batches could save.

``python -m benchmarks.training_padding [--prep DIR] [--groups 4] [--chunk 1024] [--epochs 1]``

Reads one epoch of the training stream exactly as the train stage batches it (``TrainingStream``: the
shuffle buffer, windows of ``bucket_batches`` batches sorted by size, 32 documents a batch) from a
preprocessed corpus (default: the IMDB split ``make bench`` writes), and counts the ``(sentence, word)``
cells the word encoder steps over, three ways:

- ``dense``: each batch padded to its own most sentences x longest sentence (one length group);
- ``groups``: what the model steps over: its real sentences (``han.GatherSentences`` drops the padding ones)
  sorted by length and cut into up to ``--groups`` length groups (``model.train_word_buckets``,
  ``han.SplitByLength``), each padded to its own longest sentence; ``--groups 1`` is one group;
- ``padding_cuts``: the same groups cut where padding, loop steps and groups cost least
  (``model.word_bucket_cuts: padding``);
- ``packed``: the real sentences of each window of ``bucket_batches`` batches sorted by length across its
  documents and cut into chunks of ``--chunk``, each padded to its own longest sentence (what #31 proposes for
  training; padding sentences are never encoded).

No TensorFlow: this counts, it does not time. ``real / cells`` is the share of the word encoder's steps that
read a word; ``groups / packed`` bounds what packing could save at the word level if time followed cells
(it is a bound: per-step overhead and the sentence level are left out). One JSON line, then a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.compare import bench_prep


def row_lengths(tokens: np.ndarray) -> np.ndarray:
    """One past the last real word of each ``(sentence, word)`` row of a ``(batch, sentences, words)`` batch."""
    rows = tokens.reshape(-1, tokens.shape[-1])
    positions = np.arange(1, rows.shape[1] + 1)
    return np.where(rows != 0, positions, 0).max(axis=1) if rows.size else np.zeros(0, dtype=np.int64)


def group_cells(lengths: np.ndarray, groups: int, min_sentences: int = 64) -> int:
    """The cells ``SplitByLength(groups, min_sentences)`` pads to for rows of these lengths (its empty rows too)."""
    rows = np.sort(np.concatenate([np.zeros(groups, dtype=np.int64), lengths]))
    sentences = len(lengths)
    used = int(np.clip(sentences // min_sentences, 1, groups))
    unused = groups - used
    rest = sentences + used
    cells = 0
    for k in range(groups):
        j = k - unused
        start, stop = (k, k + 1) if k < unused else (unused + (j * rest) // used, unused + ((j + 1) * rest) // used)
        members = rows[start:stop]
        cells += len(members) * max(int(members.max()) if len(members) else 0, 1)
    return cells


def model_cells(tokens: np.ndarray, groups: int, min_sentences: int = 64) -> int:
    """The word level's cells for one ``(batch, sentences, words)`` batch as the HAN runs it: its real sentences
    only (``GatherSentences``), in ``groups`` length groups."""
    lengths = row_lengths(tokens)
    return group_cells(lengths[lengths > 0], groups, min_sentences)


STEP_COST, GROUP_COST = 15.0, 250.0  # pipeline.model.han's (no TensorFlow imported here; a test holds them equal)


def padding_cut_cells(lengths: np.ndarray, groups: int, step_cost: float = STEP_COST, group_cost: float = GROUP_COST) -> int:
    """The cells ``SplitByLength(groups, cuts="padding")`` pads to for real sentences of these lengths (its
    empty rows too): the same dynamic programming over the distinct lengths, in numpy."""
    lengths = np.asarray(lengths, dtype=np.int64)
    top = int(lengths.max()) if len(lengths) else 1
    at_most = np.cumsum(np.bincount(lengths, minlength=top + 1))
    span = np.arange(top + 1)
    cost = (at_most[None, :] - at_most[:, None] + step_cost) * span[None, :].astype(float) + group_cost
    cost[span[:, None] >= span[None, :]] = np.inf
    best = np.where(span == 0, 0.0, np.inf)
    starts = []
    for _ in range(groups):
        through = best[:, None] + cost
        extended = through.min(axis=0)
        starts.append(np.where(best <= extended, span, through.argmin(axis=0)))
        best = np.minimum(best, extended)
    bounds = [top]
    for start in reversed(starts):
        bounds.insert(0, int(start[bounds[0]]))
    edges = [0, *(int(at_most[bound]) for bound in bounds[1:])]
    ordered = np.sort(lengths)
    return sum((1 + stop - start) * max(int(ordered[start:stop].max()) if stop > start else 0, 1)
               for start, stop in zip(edges, edges[1:], strict=False))


def packed_cells(lengths: np.ndarray, chunk: int) -> int:
    """Real sentences (length > 0) sorted by length, in chunks of ``chunk``, each padded to its own longest."""
    real = np.sort(lengths[lengths > 0])
    return int(sum(len(part) * int(part.max()) for part in (real[i : i + chunk] for i in range(0, len(real), chunk))))


def measure(prep: Path, groups: int, chunk: int, epochs: int = 1, *, batch_size: int = 32, bucket_batches: int = 20,
            shuffle_buffer: int = 10_000, min_sentences: int = 64, seed: int = 42) -> dict:
    """Count one or more epochs' cells; the batching settings default to ``configs/default.yaml``'s."""
    from pipeline.data.shards import TrainingStream, shard_paths

    paths = shard_paths(prep, "train")
    shapes = []
    for path in paths:
        with np.load(path, allow_pickle=False) as shard:
            shapes.append(shard["labels"].shape)
    documents = sum(shape[0] for shape in shapes)
    num_labels = shapes[0][1] if shapes and len(shapes[0]) == 2 else None  # multi-label shards: 0/1 rows
    totals = {"real": 0, "dense": 0, "groups": 0, "padding_cuts": 0, "packed": 0}
    rows = padding_rows = 0  # sentence rows of the dense batches, and those that are padding sentences
    batches = 0
    for epoch in range(epochs):
        stream = TrainingStream(paths, documents=documents, batch_size=batch_size, bucket_batches=bucket_batches,
                                seed=seed, epoch=epoch, shuffle_buffer=shuffle_buffer, num_labels=num_labels)
        window: list[np.ndarray] = []
        for tokens, *_ in stream.batches():
            lengths = row_lengths(tokens)
            totals["real"] += int(np.count_nonzero(tokens))
            rows, padding_rows = rows + len(lengths), padding_rows + int(np.count_nonzero(lengths == 0))
            totals["dense"] += int(tokens.size)
            totals["groups"] += model_cells(tokens, groups, min_sentences)
            totals["padding_cuts"] += padding_cut_cells(lengths[lengths > 0], groups)
            window.append(lengths)
            batches += 1
            if len(window) == bucket_batches:
                totals["packed"] += packed_cells(np.concatenate(window), chunk)
                window = []
        if window:
            totals["packed"] += packed_cells(np.concatenate(window), chunk)
    share = {f"real_share_{name}": round(totals["real"] / totals[name], 4) for name in ("dense", "groups", "padding_cuts", "packed")}
    return {"prep": str(prep), "documents": documents, "epochs": epochs, "batches": batches, "groups": groups,
            "chunk": chunk, "batch_size": batch_size, "bucket_batches": bucket_batches,
            "cells": totals, **share,
            "padding_sentence_share": round(padding_rows / rows, 4) if rows else 0.0, "groups_over_packed": round(totals["groups"] / totals["packed"], 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_padding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prep", type=Path, default=None,
                        help="a preprocess stage's output folder (default: the IMDB split `make bench` writes under HAN_ARTIFACTS_DIR)")
    parser.add_argument("--groups", type=int, default=4, help="length groups while training (configs/imdb.yaml: 4)")
    parser.add_argument("--chunk", type=int, default=1024, help="sentences per packed chunk (as packed inference)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the stream to count (default 1)")
    parser.add_argument("--seed", type=int, default=42, help="the stream's shuffle seed (default 42)")
    args = parser.parse_args(argv)
    args.prep = args.prep or bench_prep()
    if not (args.prep / "manifest.json").is_file():
        print(f"no preprocessed corpus in {args.prep}: run `make bench` (or `make preprocess`) first, "
              "or give --prep DIR", file=sys.stderr)
        return 2
    result = measure(args.prep, args.groups, args.chunk, args.epochs, seed=args.seed)
    print(json.dumps(result))
    print(f"word level, real words per cell stepped over: {result['real_share_dense']:.1%} in dense batches, "
          f"{result['real_share_groups']:.1%} with {args.groups} length groups ({result['real_share_padding_cuts']:.1%} "
          f"cut where padding costs least, model.word_bucket_cuts: padding), {result['real_share_packed']:.1%} packed "
          f"in chunks of {args.chunk} within each window of {result['bucket_batches']} batches; packing would step "
          f"over {1 / result['groups_over_packed']:.2f}x the cells the groups do ({result['batches']} batches, "
          f"{result['documents']:,} documents)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
