"""Where packing sentences across documents starts to pay: packed against whole-model inference by batch size.

    python -m benchmarks.packing                               # the IMDB model `make bench` trained
    python -m benchmarks.packing --sizes 32,444 --model artifacts/bench-bbc/train/model.keras \\
        --prep artifacts/bench-bbc/preprocess --config configs/bbc.yaml

``PackedInference`` runs the whole model on padded batches below ``PACK_MIN_SENTENCES`` real sentences and
packs from there (``pipeline.model.packing``). This times both ways on the first N test documents for each
N of ``--sizes``, in one process with the config's runtime settings, the two ways taking turns for
``--rounds`` rounds (a slower spell of the machine falls on both); the median round counts:

- ``packed``: the sentences of all N documents sorted by length in chunks (``min_sentences=0``: always packs);
- ``whole``: the whole model on padded batches of ``UNPACKED_BATCH`` documents sorted by size.

Results go to ``benchmarks/results/<date>-packing.json`` and ``.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compare import log
from benchmarks.inference_split import add_trained_model_arguments, shown, trained_model_and_test_split, write_results

DEFAULT_SIZES = "32,128,444,1000,3000,12000,25000"


def measure(model_path: Path, documents: list[list[np.ndarray]], sizes: list[int], rounds: int = 5) -> dict[str, Any]:
    from pipeline.model.han import document_outputs, load_han
    from pipeline.model.packing import PACK_MIN_SENTENCES, UNPACKED_BATCH, PackedInference

    model = load_han(model_path)
    infer = PackedInference(model, min_sentences=0)
    infer.warm_up(documents[:UNPACKED_BATCH])
    ways = {"packed": lambda docs: document_outputs(infer, docs, UNPACKED_BATCH),
            "whole": lambda docs: document_outputs(infer, docs, UNPACKED_BATCH, packed=False)}
    rows = []
    for size in sizes:
        docs = documents[:size]
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(rounds):
            for way, run in ways.items():
                started = time.perf_counter()
                run(docs)
                seconds[way].append(time.perf_counter() - started)
        sentences = sum(1 for doc in docs for sentence in doc if len(sentence))
        row = {"documents": len(docs), "sentences": sentences,
               **{f"{way}_docs_per_s": round(len(docs) / float(np.median(s)), 1) for way, s in seconds.items()},
               **{f"{way}_seconds": [round(x, 4) for x in s] for way, s in seconds.items()}}
        row["packed_over_whole"] = round(row["packed_docs_per_s"] / row["whole_docs_per_s"], 3)
        rows.append(row)
        log(f"packing: {len(docs):,} documents ({sentences:,} sentences): packed {row['packed_docs_per_s']:,.0f}, "
            f"whole {row['whole_docs_per_s']:,.0f} docs/s ({row['packed_over_whole']:.2f}x)")
    return {"rounds": rounds, "threads": infer.threads, "sentence_batch": infer.sentence_batch,
            "unpacked_batch": UNPACKED_BATCH, "pack_min_sentences": PACK_MIN_SENTENCES, "sizes": rows}


def report(result: dict[str, Any], command: str) -> str:
    lines = [f"# Packed against whole-model inference by batch size, {result['date']}", "",
             f"`{command}` on `{result['model']}`, the first N test documents, {result['rounds']} rounds with the two "
             f"ways taking turns (median round), {result['threads']} calls side by side when packed (chunks of "
             f"{result['sentence_batch']:,} sentences), whole-model batches of {result['unpacked_batch']} documents. "
             f"Machine: {result['machine'].get('cpu', '?')}, {result['machine'].get('cores', '?')} cores.", "",
             "| documents | sentences | packed, docs/s | whole model, docs/s | packed / whole |",
             "|---|---|---|---|---|"]
    for row in result["sizes"]:
        lines.append(f"| {row['documents']:,} | {row['sentences']:,} | {row['packed_docs_per_s']:,.0f} | "
                     f"{row['whole_docs_per_s']:,.0f} | {row['packed_over_whole']:.2f}x |")
    lines += ["", f"`PACK_MIN_SENTENCES` is {result['pack_min_sentences']:,}: inference packs from that many real "
              "sentences and runs the whole model below.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.packing", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trained_model_arguments(parser)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"numbers of documents, comma-separated (default {DEFAULT_SIZES})")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both ways per size (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md (default: results/<date>-packing)")
    args = parser.parse_args(argv)
    found = trained_model_and_test_split(args)
    if found is None:
        return 2
    model, documents = found
    sizes = sorted({min(int(size), len(documents)) for size in args.sizes.split(",") if size.strip()})
    result = measure(model, documents, sizes, rounds=args.rounds)
    result["model"] = shown(model)
    return write_results(result, report, "packing", argv, args.out)


if __name__ == "__main__":
    sys.exit(main())
