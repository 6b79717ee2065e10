"""Memory as the corpus grows: peak RSS of preprocessing and training at 25k and 100k documents.

    HAN_DATA_DIR=../shared/data python -m benchmarks.memory                     # 25k and 100k (make bench-memory)
    HAN_DATA_DIR=../shared/data python -m benchmarks.memory --quick             # 1k and 4k: a smoke run

The corpora repeat IMDB's 25,000 training reviews (copy ``k`` of review ``id`` has id ``r<k>-<id>``)
as a JSON Lines file, so the larger one is the same text four times over. For each size, in a
fresh process each (peak RSS is ``VmHWM`` of that process alone):

- ``preprocess``: the real preprocess stage, streaming, with its default shard size;
- ``stream``: one whole epoch of the training input (``pipeline.data.shards.TrainingStream`` through
  ``tf.data``, no model), so every shard of the larger corpus is read;
- ``train``: the real train stage, default model, one epoch cut to ``--steps`` batches (the
  validation split, 10% of the corpus, is evaluated in full).

The target is flat memory: peak RSS at the largest size over the smallest, per step, near 1.
Results go to ``benchmarks/results/memory-<date>.json`` and ``.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.compare import RESULT_PREFIX, log, machine, peak_rss_mb
from pipeline.config import data_root

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("preprocess", "stream", "train")


def imdb_training_reviews() -> list[dict[str, str]]:
    from pipeline.config import load_config
    from pipeline.data.readers import read_documents
    from pipeline.data.records import RawDocument

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "imdb.yaml")
    rows = []
    for record in read_documents(config.data, data_root() / "aclImdb.tar.gz"):
        if isinstance(record, RawDocument) and record.split == "train":
            rows.append({"id": record.id, "text": record.text, "label": record.label})
    return rows


def write_corpus(reviews: list[dict[str, str]], documents: int, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(documents):
            review = reviews[i % len(reviews)]
            out.write(json.dumps({**review, "id": f"r{i // len(reviews)}-{review['id']}"}) + "\n")
    return path


def overrides(corpus: Path, documents: int, steps: int) -> list[str]:
    return [f"name=memory-{documents}", "data.format=jsonl", f"data.path={corpus}", "data.labels=[neg, pos]",
            "tracking.registered_model=bench-memory", "tracking.experiment=benchmarks",
            "train.epochs=1", f"train.max_steps_per_epoch={steps}", "train.early_stopping.patience=0"]


def child(step: str, corpus: Path, documents: int, steps: int) -> dict[str, Any]:
    from pipeline.config import load_config

    config = load_config(None, overrides(corpus, documents, steps))
    started = time.perf_counter()
    if step == "preprocess":
        from pipeline.stages import preprocess

        manifest = preprocess.run(config, force=True).manifest
        detail = {"documents": manifest["counts"]["input"], "kept": manifest["counts"]["kept"]}
    elif step == "stream":
        from pipeline.artifacts import read_json
        from pipeline.data.shards import TrainingStream, shard_paths, training_dataset

        prep = config.stage_dir("preprocess")
        stats = read_json(prep / "stats.json")
        stream = TrainingStream(shard_paths(prep, "train"), documents=stats["documents"]["train"],
                                batch_size=config.train.batch_size, bucket_batches=config.train.bucket_batches,
                                seed=config.seed, epoch=0, shuffle_buffer=config.train.shuffle_buffer)
        batches = sum(1 for _ in training_dataset(stream))
        detail = {"documents": stats["documents"]["train"], "batches": batches, "shards": len(stream.paths)}
    else:
        from pipeline.stages import train

        manifest = train.run(config, force=True).manifest
        detail = {"steps": min(steps, manifest["steps_per_epoch"]), "epochs": manifest["epochs_run"]}
    return {"seconds": round(time.perf_counter() - started, 2), **detail, "peak_rss_mb": peak_rss_mb()}


def run_child(step: str, corpus: Path, documents: int, steps: int, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.memory", "--child", step, "--corpus", str(corpus),
               "--documents", str(documents), "--steps", str(steps)]
    process = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in process.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{step} at {documents:,} documents failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def markdown(report: dict[str, Any]) -> str:
    sizes = list(report["sizes"])
    lines = [f"# Memory as the corpus grows ({report['date']})", "",
             f"IMDB training reviews repeated; {report['machine']['cores']} cores, {report['steps']} training steps. Peak RSS (MB) of each step in its own process.",
             "", "| step | " + " | ".join(f"{int(s):,} docs" for s in sizes) + " | largest / smallest |",
             "|---|" + "---|" * len(sizes) + "---|"]
    for step in STEPS:
        cells = [f"{report['sizes'][s][step]['peak_rss_mb']:,.0f} MB ({report['sizes'][s][step]['seconds']:.0f} s)" for s in sizes]
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {report['ratios'][step]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="25000,100000", help="corpus sizes in documents, comma separated")
    parser.add_argument("--steps", type=int, default=100, help="training batches per size (default 100)")
    parser.add_argument("--quick", action="store_true", help="1,000 and 4,000 documents, 10 steps: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for memory-<date>.json and .md")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--documents", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(child(args.child, args.corpus, args.documents, args.steps)), flush=True)
        return 0

    sizes = [1000, 4000] if args.quick else [int(s) for s in args.sizes.split(",")]
    steps = 10 if args.quick else args.steps
    log(f"reading IMDB training reviews from {data_root() / 'aclImdb.tar.gz'}")
    reviews = imdb_training_reviews()
    # neg and pos alternate (the archive lists all neg, then all pos), so any prefix has both labels.
    by_label = [[r for r in reviews if r["label"] == label] for label in ("neg", "pos")]
    reviews = [review for pair in zip(*by_label, strict=False) for review in pair]
    if args.quick:  # a quarter of the largest size: the corpus repeats it four times
        reviews = reviews[: max(2, max(sizes) // 4)]
    report: dict[str, Any] = {"date": dt.date.today().isoformat(), "quick": args.quick, "machine": machine(),
                              "steps": steps, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="han-memory-") as scratch:
        env = {**os.environ, "HAN_ARTIFACTS_DIR": str(Path(scratch) / "artifacts"), "TF_CPP_MIN_LOG_LEVEL": "2",
               "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path(scratch) / 'mlflow.db'}")}
        for documents in sizes:
            corpus = write_corpus(reviews, documents, Path(scratch) / f"imdb-{documents}.jsonl")
            report["sizes"][str(documents)] = {}
            for step in STEPS:
                log(f"{documents:,} documents: {step}")
                result = run_child(step, corpus, documents, steps, env)
                report["sizes"][str(documents)][step] = result
                log(f"{documents:,} documents: {step} peak RSS {result['peak_rss_mb']:,.0f} MB in {result['seconds']:.0f} s")
            corpus.unlink()
    smallest, largest = str(min(sizes)), str(max(sizes))
    report["ratios"] = {step: round(report["sizes"][largest][step]["peak_rss_mb"] / report["sizes"][smallest][step]["peak_rss_mb"], 3)
                        for step in STEPS}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"memory-{report['date']}" + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
