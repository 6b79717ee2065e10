"""Where packed batch inference spends its time, on the IMDB model ``make bench`` trained.

    python -m benchmarks.inference_split                 # the 25,000 test reviews
    python -m benchmarks.inference_split --documents 2000

Issue #31 asks for the measured reason IMDB inference stops below 4x the reference. Packing leaves
almost no padding (``packed_word_padding``), so this splits what is left, in one process, with the
runtime settings of ``--config`` (default ``configs/imdb.yaml``):

1. ``docs_per_s``: ``PackedInference.outputs`` as evaluate runs it (one call per core side by side), and with
   other sentence chunk sizes (``--chunks``);
2. the same pass on one thread, each level timed where it is called: the word level (embedding, word
   BiGRU, word attention: one ``tf.function`` per chunk of sentences), the sentence level, and the rest
   (Python and numpy: sorting, padding the chunks, putting the results back);
3. the word level's cost model, fitted on timed calls of that function on ``rows x steps`` grids of random
   ids drawn from the documents' own words, so that each call has as many distinct words as real text (least
   squares): ``seconds = call + steps x (step + rows x cell)``. ``step`` is what a loop step
   costs whatever its rows (the loops' per-step ops), ``cell`` what each sentence adds to a step. Applied
   to the pass's own chunks, it splits the word level into per-call, per-step and per-cell parts, and says
   how much of it no packing or padding cut could remove: only fewer or cheaper steps and cells would.

Results go to ``benchmarks/results/<date>-inference-split.json`` and ``.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compare import bench_prep, log, machine
from pipeline.config import PROJECT_ROOT

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "imdb.yaml"
GRID_ROWS = (1, 64, 256, 1024)
GRID_STEPS = (5, 20, 40, 70)
REPEATS = 3


def fit_word_cost(samples: list[tuple[int, int, float]]) -> dict[str, float]:
    """Least squares ``seconds = call + steps * step + steps * rows * cell`` over ``(rows, steps, seconds)``."""
    design = np.asarray([[1.0, steps, steps * rows] for rows, steps, _ in samples])
    seconds = np.asarray([s for _, _, s in samples])
    (call, step, cell), *_ = np.linalg.lstsq(design, seconds, rcond=None)
    return {"call_s": float(call), "step_s": float(step), "cell_s": float(cell)}


def chunk_shapes(lengths: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """``(rows, steps)`` of each word-level call packing makes of these sentence lengths (empty ones skipped)."""
    ordered = np.sort(lengths[lengths > 0])
    return [(len(ordered[i : i + chunk]), int(ordered[min(i + chunk, len(ordered)) - 1])) for i in range(0, len(ordered), chunk)]


def time_grid(function, words: np.ndarray, rows, steps, repeats: int) -> list[tuple[int, int, float]]:
    """``(rows, steps, seconds)`` of ``function`` on ``rows x steps`` ids drawn from ``words`` (so each call has
    as many distinct words as real text), every grid point ``repeats`` times; ``function`` must return values,
    not handles still computing."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(repeats):
        for r in rows:
            for s in steps:
                ids = tf.constant(rng.choice(words, (r, s)), tf.int32)
                started = time.perf_counter()
                function(ids)
                samples.append((r, s, time.perf_counter() - started))
    return samples


def split_by_cost(shapes: list[tuple[int, int]], cost: dict[str, float]) -> dict[str, float]:
    """The word level's predicted seconds over ``shapes``, by part of the cost model."""
    calls = len(shapes) * cost["call_s"]
    steps = sum(steps for _, steps in shapes) * cost["step_s"]
    cells = sum(rows * steps for rows, steps in shapes) * cost["cell_s"]
    return {"calls_s": calls, "steps_s": steps, "cells_s": cells, "predicted_s": calls + steps + cells}


def timed(function, counter: dict[str, float], key: str):
    def wrapper(*args):
        started = time.perf_counter()
        out = function(*args)
        out = [np.asarray(x) for x in out]  # the values, not handles still computing
        counter[key] += time.perf_counter() - started
        return out
    return wrapper


def measure(model_path: Path, documents: list[list[np.ndarray]], rows=GRID_ROWS, steps=GRID_STEPS,
            repeats: int = REPEATS, chunks: tuple[int, ...] = ()) -> dict[str, Any]:
    from pipeline.model.han import load_han
    from pipeline.model.packing import PackedInference

    model = load_han(model_path)
    packed = PackedInference(model, min_sentences=0)  # packing is what this splits, at any size
    packed.outputs(documents[:256])  # trace both levels
    started = time.perf_counter()
    packed.outputs(documents)
    seconds = time.perf_counter() - started
    # Other sentence chunk sizes, the same model and process (each level's graph is traced for any shape).
    by_chunk = {}
    for chunk in chunks:
        other = PackedInference(model, sentence_batch=chunk, min_sentences=0)
        other.outputs(documents[:256])
        started = time.perf_counter()
        other.outputs(documents)
        by_chunk[str(chunk)] = round(len(documents) / (time.perf_counter() - started), 1)

    single = PackedInference(model, threads=1, min_sentences=0)
    single.outputs(documents[:256])
    counter = {"words": 0.0, "sentences": 0.0}
    single._words = timed(single._words, counter, "words")
    single._sentences = timed(single._sentences, counter, "sentences")
    started = time.perf_counter()
    single.outputs(documents)
    one_thread = time.perf_counter() - started

    words = np.concatenate([sentence for doc in documents for sentence in doc])  # the documents' word frequencies
    cost = fit_word_cost(time_grid(lambda ids: [np.asarray(x) for x in packed._words(ids)], words, rows, steps, repeats))
    lengths = np.asarray([len(sentence) for doc in documents for sentence in doc], dtype=np.int64)
    shapes = chunk_shapes(lengths, packed.sentence_batch)
    parts = split_by_cost(shapes, cost)
    return {
        "documents": len(documents), "tokens": int(lengths.sum()), "sentences": int((lengths > 0).sum()),
        "docs_per_s": round(len(documents) / seconds, 1), "threads": packed.threads, "sentence_batch": packed.sentence_batch,
        "docs_per_s_by_sentence_batch": by_chunk,
        "one_thread": {"seconds": round(one_thread, 4), "word_level_s": round(counter["words"], 4),
                       "sentence_level_s": round(counter["sentences"], 4),
                       "rest_s": round(one_thread - counter["words"] - counter["sentences"], 4)},
        "word_cost": {k: float(f"{v:.4g}") for k, v in cost.items()},
        "word_chunks": len(shapes), "word_steps": sum(s for _, s in shapes), "word_cells": sum(r * s for r, s in shapes),
        "word_level_by_cost": {k: round(v, 4) for k, v in parts.items()},
    }


def report(result: dict[str, Any], command: str) -> str:
    one, parts = result["one_thread"], result["word_level_by_cost"]
    cost = result["word_cost"]

    def share(x: float, whole: float) -> str:
        return f"{x:.2f} s ({x / whole:.0%})" if whole else f"{x:.2f} s"

    return "\n".join([
        f"# Where packed inference spends its time, {result['date']}", "",
        f"`{command}` on {result['model']}, {result['documents']:,} test documents ({result['sentences']:,} sentences, "
        f"{result['tokens']:,} words), {result['machine']['cpu']}, {result['machine']['cores']} cores.", "",
        f"- packed, {result['threads']} calls side by side (as evaluate runs it, chunks of {result['sentence_batch']:,} "
        f"sentences): **{result['docs_per_s']:,.0f} docs/s**"
        + "".join(f"; chunks of {int(k):,}: {v:,.0f}" for k, v in result["docs_per_s_by_sentence_batch"].items()),
        f"- the same pass on one thread, {one['seconds']:.2f} s: word level {share(one['word_level_s'], one['seconds'])}, "
        f"sentence level {share(one['sentence_level_s'], one['seconds'])}, the rest (Python and numpy) "
        f"{share(one['rest_s'], one['seconds'])}",
        f"- the word level's cost, fitted on {len(GRID_ROWS) * len(GRID_STEPS) * REPEATS} timed calls (rows "
        f"{', '.join(map(str, GRID_ROWS))} x steps {', '.join(map(str, GRID_STEPS))}): {cost['call_s'] * 1e3:.3g} ms per call "
        f"+ {cost['step_s'] * 1e6:.3g} us per loop step + {cost['cell_s'] * 1e9:.3g} ns per sentence per step",
        f"- applied to this pass's {result['word_chunks']:,} chunks ({result['word_steps']:,} steps, "
        f"{result['word_cells']:,} cells): {parts['predicted_s']:.2f} s predicted against "
        f"{one['word_level_s']:.2f} s measured; per call {share(parts['calls_s'], parts['predicted_s'])}, per step "
        f"{share(parts['steps_s'], parts['predicted_s'])}, per cell {share(parts['cells_s'], parts['predicted_s'])}",
        ""])


def shown(path: Path) -> str:
    """``path`` as results files name it: relative to the project where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def add_trained_model_arguments(parser: argparse.ArgumentParser, default_config: Path = DEFAULT_CONFIG) -> None:
    """``--model``, ``--prep`` and ``--config`` of the benchmarks that read a model ``make bench`` trained."""
    parser.add_argument("--model", type=Path, default=None,
                        help="a trained model.keras (default: the IMDB model `make bench` trained)")
    parser.add_argument("--prep", type=Path, default=None, help="its preprocess folder (default: `make bench`'s IMDB one)")
    parser.add_argument("--config", type=Path, default=default_config, help="runtime settings to apply (threads, arenas)")


def trained_model_and_test_split(args: argparse.Namespace) -> tuple[Path, list[list[np.ndarray]]] | None:
    """The model and its test documents, with the config's runtime applied before TensorFlow starts (as evaluate
    does); None, having said what to run, where ``make bench`` has not written them."""
    prep = args.prep or bench_prep()
    model = args.model or prep.parent / "train" / "model.keras"
    if not model.is_file() or not list(prep.glob("test-*.npz")):
        print(f"error: needs {model} and test shards in {prep}; run `make bench` first (or pass --model and --prep)",
              file=sys.stderr)
        return None
    from pipeline.config import load_config
    from pipeline.data.shards import load_split
    from pipeline.runtime import apply_runtime

    apply_runtime(load_config(args.config).resolved().runtime)
    return model, load_split(prep, "test").documents()


def write_results(result: dict[str, Any], report, name: str, argv: list[str] | None, out: Path | None) -> int:
    """``result`` (dated, with the machine) to ``<out>.json`` and its report to ``<out>.md`` (default
    ``results/<date>-<name>``), the report printed; the command line the report names is this run's."""
    result.update(date=dt.date.today().isoformat(), machine=machine())
    command = " ".join([f"python -m benchmarks.{name.replace('-', '_')}", *(argv if argv is not None else sys.argv[1:])])
    out = out or RESULTS / f"{result['date']}-{name}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result, command)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference_split", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trained_model_arguments(parser)
    parser.add_argument("--documents", type=int, default=None, help="the first N test documents (default: all)")
    parser.add_argument("--chunks", default="256,512,2048",
                        help="other sentence chunk sizes to time in the same process, comma-separated (default 256,512,2048)")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md (default: results/<date>-inference-split)")
    args = parser.parse_args(argv)
    found = trained_model_and_test_split(args)
    if found is None:
        return 2
    model, documents = found
    documents = documents[: args.documents]
    log(f"inference split: {len(documents):,} documents from {args.prep or bench_prep()}")
    chunks = tuple(int(c) for c in args.chunks.split(",") if c.strip())
    result = measure(model, documents, chunks=chunks)
    result["model"] = shown(model)
    return write_results(result, report, "inference-split", argv, args.out)


if __name__ == "__main__":
    sys.exit(main())
