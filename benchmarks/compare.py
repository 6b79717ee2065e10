"""``make bench``: our HAN against a reference padded HAN and TF-IDF + LR, on BBC and IMDB.

    HAN_DATA_DIR=../shared/data python -m benchmarks.compare            # the full benchmark
    HAN_DATA_DIR=../shared/data python -m benchmarks.compare --quick    # a smoke run on a subsample

For each dataset the corpus is preprocessed once by the real preprocess stage (``configs/<dataset>.yaml``;
``--quick`` first copies a few documents per class and split into a temporary folder). Then each
system runs in its own process, so that its peak RSS is its own:

- ``han``: the train stage with the dataset's config (the model, bucketing, early stopping that
  ``make train`` uses), then batch inference over the test split and one-document explain
  latency through the raw-text classifier (text in, label and attention weights out);
- ``reference_han``: ``benchmarks.reference_han`` (padded to 15 x 40, no masks, TimeDistributed),
  same layer sizes, optimizer, learning rate, batch size, epochs and early stopping;
- ``tfidf_lr``: TF-IDF on 1-2 grams of the full documents + logistic regression.

Reported per system: accuracy, macro_f1, train_docs_per_s (training documents x epochs / training
seconds, validation included, as both HANs do it), infer_docs_per_s (test documents / seconds of
batch inference), explain_p50_ms / explain_p95_ms (HAN systems), peak_rss_mb (train_peak_rss_mb: when
training ended, HAN systems), train_seconds,
epochs; for our HAN also word2vec_seconds (the word vectors it learns from the training split first,
when its config asks: outside train_seconds, null when off). The HAN also reports its training FLOP/s on real tokens (``flops``) as a fraction of a dense
matmul's FLOP/s measured in the same process. Results go to ``benchmarks/results/<date>.json`` and
``.md`` (``--out`` elsewhere) and to an MLflow run in the experiment ``benchmarks``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PROJECT_ROOT, PipelineConfig, data_root, load_config

DATASETS = {"bbc": "configs/bbc.yaml", "imdb": "configs/imdb.yaml"}
SYSTEMS = ("han", "reference_han", "tfidf_lr")
QUICK_PER_CLASS = 30  # documents per class (and split) in --quick
# Two length groups, not the configs' 8: each group is traced once per process, which dominates a smoke test.
QUICK_SET = ["train.epochs=2", "train.early_stopping.patience=0", "preprocess.max_quarantine_fraction=0.2",
             "model.word_buckets=2"]
EXPLAIN_DOCUMENTS = 60
INFER_BATCH = 256
RESULT_PREFIX = "BENCH-RESULT "
# Issue #9's targets, checked against every run's own figures (``targets``).
SPEED_RATIO = 4.0             # training and batch inference, against the reference HAN in the same run
ACCURACY = {"bbc": 0.985, "imdb": 0.915}
TRAIN_MINUTES = 30.0          # word2vec and training together
EXPLAIN_P50_MS = 50.0
TRAIN_PEAK_MB = {"imdb": 1200.0}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- corpora and configs


def quick_corpus(dataset: str, source: Path, target: Path, per_class: int = QUICK_PER_CLASS) -> Path:
    """A few real documents per class (and per split for IMDB) copied into ``target``."""
    out = target / f"{dataset}-quick"
    if dataset == "bbc":
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            (out / folder.name).mkdir(parents=True, exist_ok=True)
            for file in sorted(folder.glob("*.txt"))[:per_class]:
                (out / folder.name / file.name).write_bytes(file.read_bytes())
        return out
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(source, "r:*") as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in ("train", "test") or parts[2] not in ("pos", "neg"):
                continue
            key = (parts[1], parts[2])
            if counts.get(key, 0) >= per_class:
                if len(counts) == 4 and min(counts.values()) >= per_class:
                    break
                continue
            counts[key] = counts.get(key, 0) + 1
            (out / parts[1] / parts[2]).mkdir(parents=True, exist_ok=True)
            (out / parts[1] / parts[2] / parts[3]).write_bytes(archive.extractfile(member).read())
    return out


def bench_config(dataset: str, quick: bool, data_path: str | None, extra: list[str] = ()) -> PipelineConfig:
    overrides = [f"name=bench-{dataset}{'-quick' if quick else ''}", f"tracking.registered_model=bench-{dataset}",
                 "tracking.experiment=benchmarks"]
    if quick:
        overrides += [*QUICK_SET, f"data.path={data_path}"]
    return load_config(PROJECT_ROOT / DATASETS[dataset], [*overrides, *extra])


def limits_at_least_reference(config: PipelineConfig) -> list[str]:
    """Overrides that raise the preprocessed limits to at least the reference's 15 x 40, if needed.

    Our default limits are the training split's p95; where that is below 15 sentences or 40
    words, the comparison would give our HAN less text than the reference reads.
    """
    from benchmarks.reference_han import MAX_SENTENCES, MAX_WORDS

    limits = json.loads((config.stage_dir("preprocess") / "stats.json").read_text())["limits"]
    if limits["max_sentences"] >= MAX_SENTENCES and limits["max_words"] >= MAX_WORDS:
        return []
    return [f"preprocess.limits.max_sentences={max(limits['max_sentences'], MAX_SENTENCES)}",
            f"preprocess.limits.max_words={max(limits['max_words'], MAX_WORDS)}"]


# ----------------------------------------------------------------------------- one system (child process)


def _scores(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predicted = probabilities.argmax(axis=1)
    return {"accuracy": round(float(accuracy_score(y_true, predicted)), 4),
            "macro_f1": round(float(f1_score(y_true, predicted, average="macro")), 4)}


def _raw_texts(prep_dir: Path, split: str) -> list[str]:
    rows = [json.loads(line) for line in (prep_dir / f"{split}.documents.jsonl").read_text(encoding="utf-8").splitlines()]
    return [" ".join(row["sentences"]) for row in rows]


def _latencies(call, texts: list[str]) -> dict[str, float]:
    for text in texts[:3]:
        call(text)  # warm-up: the first calls trace the graph
    times = []
    for text in texts:
        started = time.perf_counter()
        call(text)
        times.append((time.perf_counter() - started) * 1000)
    return {"explain_p50_ms": round(float(np.percentile(times, 50)), 2),
            "explain_p95_ms": round(float(np.percentile(times, 95)), 2)}


def matmul_flops_per_s(size: int = 1024, seconds: float = 2.0) -> float:
    """FLOP/s of dense float32 matmuls on all of this machine's cores, now (the efficiency yardstick).

    One independent matmul per core in one graph: with one thread per op (``runtime``) they run
    side by side, with TensorFlow's default threads each one uses every core; either way the
    yardstick is the whole machine, not one core."""
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    pairs = [(tf.random.normal((size, size)), tf.random.normal((size, size))) for _ in range(cores)]
    product = tf.function(lambda: [tf.reduce_sum(tf.matmul(a, b)) for a, b in pairs])
    [value.numpy() for value in product()]
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        [value.numpy() for value in product()]
        runs += 1
    return 2 * size**3 * cores * runs / (time.perf_counter() - started)


def han_training_flops(config: PipelineConfig, words: int, sentences: int) -> float:
    """FLOPs of one training pass over ``words`` real tokens in ``sentences`` real sentences.

    Forward: a bidirectional GRU step costs 2 directions x 3 gates x 2 FLOPs x (inputs x units +
    units x units), plus the gate arithmetic (small, ignored); additive attention costs
    2 x features x context (the projection) + 2 x context (the score) per position. Backward is
    counted as twice the forward (the usual 3x for a training step).
    """
    model = config.model
    e, uw, us = model.embedding.dim, model.word_units, model.sentence_units
    cw, cs = model.word_attention.context_dim, model.sentence_attention.context_dim
    word = 2 * 3 * 2 * (e * uw + uw * uw) + 2 * (2 * uw) * cw + 2 * cw
    sentence = 2 * 3 * 2 * (2 * uw * us + us * us) + 2 * (2 * us) * cs + 2 * cs
    return 3.0 * (words * word + sentences * sentence)


def run_han(config: PipelineConfig) -> dict[str, Any]:
    from pipeline.model import document_outputs, inference_function, load_han
    from pipeline.serving import RawTextClassifier
    from pipeline.shards import load_split
    from pipeline.stages import train

    prep = config.stage_dir("preprocess")
    trained = train.run(config, force=True)
    train_peak = peak_rss_mb()  # training alone (inference over the test split comes next)
    manifest = trained.manifest
    train_split, test = load_split(prep, "train"), load_split(prep, "test")
    epochs, seconds = int(manifest["epochs_run"]), float(manifest["train_seconds"])

    infer = inference_function(load_han(trained.output_dir / "model.keras"))
    documents = test.documents()
    document_outputs(infer, documents[:INFER_BATCH], INFER_BATCH)  # warm-up
    started = time.perf_counter()
    outputs = document_outputs(infer, documents, INFER_BATCH)
    infer_seconds = time.perf_counter() - started
    probabilities = np.stack([out["probabilities"] for out in outputs])

    classifier = RawTextClassifier.from_directory(trained.output_dir / "bundle")
    latency = _latencies(lambda text: classifier.predict([text]), _raw_texts(prep, "test")[:EXPLAIN_DOCUMENTS])

    words = int(np.sum(train_split.sentence_lengths))  # real tokens after truncation, as the model reads them
    achieved = han_training_flops(config, words, int(np.sum(train_split.document_lengths))) * epochs / seconds
    peak = matmul_flops_per_s()
    return {**_scores(test.labels, probabilities), "train_docs_per_s": round(len(train_split) * epochs / seconds, 1),
            "infer_docs_per_s": round(len(test) / infer_seconds, 1), **latency, "train_seconds": round(seconds, 2),
            "word2vec_seconds": manifest.get("word2vec_seconds"), "train_peak_rss_mb": train_peak, "epochs": epochs, "limits": json.loads((prep / "stats.json").read_text())["limits"],
            "flops": {"achieved_per_s": round(achieved), "matmul_per_s": round(peak),
                      "fraction_of_matmul": round(achieved / peak, 4)}}


def reference_optimizer(config: PipelineConfig, train_documents: int):
    """The reference HAN's optimizer: the train stage's own (``build_optimizer``: optimizer, clipping
    and learning-rate schedule, stepped per batch), so the two HANs stay like for like, except
    that ``lazy_adam`` is Keras' ``Adam`` here, as the public Keras HANs have it (our lazy
    embedding update is one of the things the benchmark measures)."""
    from pipeline.stages.train import build_optimizer

    settings = config.train
    if settings.optimizer == "lazy_adam":
        settings = settings.model_copy(update={"optimizer": "adam"})
    return build_optimizer(settings, math.ceil(train_documents / config.train.batch_size))


def run_reference(config: PipelineConfig) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from benchmarks.reference_han import MAX_SENTENCES, MAX_WORDS, build_reference_han, pad_fixed
    from pipeline.serving import RawTextClassifier
    from pipeline.shards import load_split
    from pipeline.text import TextProcessor
    from pipeline.vocab import Vocabulary

    keras.utils.set_random_seed(config.seed)
    prep = config.stage_dir("preprocess")
    splits = {name: load_split(prep, name) for name in ("train", "validation", "test")}
    x = {name: pad_fixed(split.documents()) for name, split in splits.items()}
    labels = json.loads((prep / "labels.json").read_text())
    vocab = Vocabulary.load(prep / "vocab.json")
    m = config.model
    model = build_reference_han(len(vocab), len(labels), embedding_dim=m.embedding.dim, word_units=m.word_units,
                                sentence_units=m.sentence_units, word_context=m.word_attention.context_dim,
                                sentence_context=m.sentence_attention.context_dim)
    trainer = keras.Model(model.input, model.output["probabilities"])
    t = config.train
    trainer.compile(optimizer=reference_optimizer(config, len(splits["train"])),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    has_validation = len(splits["validation"]) > 0
    callbacks = []
    if t.early_stopping.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=t.early_stopping.monitor if has_validation else t.early_stopping.monitor.removeprefix("val_"),
            patience=t.early_stopping.patience, min_delta=t.early_stopping.min_delta, restore_best_weights=True))
    started = time.perf_counter()
    history = trainer.fit(x["train"], splits["train"].labels, batch_size=t.batch_size, epochs=t.epochs, verbose=2,
                          validation_data=(x["validation"], splits["validation"].labels) if has_validation else None,
                          callbacks=callbacks)
    seconds = time.perf_counter() - started
    train_peak = peak_rss_mb()
    epochs = len(history.history["loss"])

    trainer.predict(x["test"][:INFER_BATCH], batch_size=INFER_BATCH, verbose=0)  # warm-up
    started = time.perf_counter()
    probabilities = trainer.predict(x["test"], batch_size=INFER_BATCH, verbose=0)
    infer_seconds = time.perf_counter() - started

    # Explain: the same text processing as ours (sentences, tokens, ids), padded to 15 x 40, one forward pass.
    reader = RawTextClassifier(model, TextProcessor.load(prep / "text_processor.json"), vocab, labels,
                               MAX_SENTENCES, MAX_WORDS)
    forward = tf.function(lambda batch: model(batch, training=False))
    latency = _latencies(lambda text: forward(pad_fixed(reader.encode([text]))), _raw_texts(prep, "test")[:EXPLAIN_DOCUMENTS])
    return {**_scores(splits["test"].labels, np.asarray(probabilities)),
            "train_docs_per_s": round(len(splits["train"]) * epochs / seconds, 1),
            "infer_docs_per_s": round(len(splits["test"]) / infer_seconds, 1), **latency,
            "train_seconds": round(seconds, 2), "train_peak_rss_mb": train_peak, "epochs": epochs,
            "limits": {"max_sentences": MAX_SENTENCES, "max_words": MAX_WORDS}}


def run_tfidf(config: PipelineConfig) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    prep = config.stage_dir("preprocess")
    labels = json.loads((prep / "labels.json").read_text())

    def split(name: str) -> tuple[list[str], np.ndarray]:
        rows = [json.loads(line) for line in (prep / f"{name}.documents.jsonl").read_text(encoding="utf-8").splitlines()]
        return [" ".join(row["sentences"]) for row in rows], np.asarray([labels.index(row["label"]) for row in rows])

    (train_texts, y_train), (test_texts, y_test) = split("train"), split("test")
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=500_000)
    classifier = LogisticRegression(C=10.0, max_iter=2000, random_state=config.seed)
    classifier.fit(vectorizer.fit_transform(train_texts), y_train)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    probabilities = classifier.predict_proba(vectorizer.transform(test_texts))
    infer_seconds = time.perf_counter() - started
    return {**_scores(y_test, probabilities), "train_docs_per_s": round(len(train_texts) / seconds, 1),
            "infer_docs_per_s": round(len(test_texts) / infer_seconds, 1), "train_seconds": round(seconds, 2),
            "epochs": 1}


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss``, not inherited from the
    parent that forked it, whose size at the fork would otherwise count)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


RUNNERS = {"han": run_han, "reference_han": run_reference, "tfidf_lr": run_tfidf}


def child(system: str, dataset: str, quick: bool, data_path: str | None, extra: list[str]) -> int:
    from pipeline.runtime import apply_runtime

    config = bench_config(dataset, quick, data_path, extra)
    apply_runtime(config.runtime)  # every system on the same thread settings (like for like)
    result = RUNNERS[system](config)
    result["peak_rss_mb"] = peak_rss_mb()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- the whole benchmark


def machine() -> dict[str, Any]:
    import tensorflow as tf

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)}


def targets(dataset: str, systems: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Where this run stands on each of issue #9's targets that its figures can answer.

    One row per target: ``key``, ``target`` (words), ``value``, ``threshold``, ``met`` and
    ``shown`` (the value as the markdown prints it). A target needing a system the run did not
    include (``--systems``) is left out.
    """
    han, reference = systems.get("han"), systems.get("reference_han")
    rows = []

    def row(key: str, words: str, value: float, threshold: float, met: bool, shown: str) -> None:
        rows.append({"key": key, "target": words, "value": round(value, 4), "threshold": threshold, "met": bool(met),
                     "shown": shown})

    if han and reference:
        for key, figure, words in (("training_ratio", "train_docs_per_s", "training docs/s"),
                                   ("inference_ratio", "infer_docs_per_s", "batch inference docs/s")):
            ratio = han[figure] / reference[figure]
            row(key, f"{words} >= {SPEED_RATIO:g}x the reference's", ratio, SPEED_RATIO, ratio >= SPEED_RATIO,
                f"{ratio:.2f}x")
        row("accuracy_vs_reference", f"accuracy >= the reference's ({reference['accuracy']:.4f})", han["accuracy"],
            reference["accuracy"], han["accuracy"] >= reference["accuracy"], f"{han['accuracy']:.4f}")
    if han:
        if dataset in ACCURACY:
            row("accuracy", f"accuracy >= {ACCURACY[dataset]}", han["accuracy"], ACCURACY[dataset],
                han["accuracy"] >= ACCURACY[dataset], f"{han['accuracy']:.4f}")
        minutes = (han["train_seconds"] + (han.get("word2vec_seconds") or 0.0)) / 60
        row("train_minutes", f"word2vec and training within {TRAIN_MINUTES:g} minutes", minutes, TRAIN_MINUTES,
            minutes <= TRAIN_MINUTES, f"{minutes:.1f} min")
        p50 = han["explain_p50_ms"]
        row("explain_p50_ms", f"one-document explain p50 < {EXPLAIN_P50_MS:g} ms", p50, EXPLAIN_P50_MS,
            p50 < EXPLAIN_P50_MS, f"{p50:.1f} ms")
        if dataset in TRAIN_PEAK_MB:
            peak = han["train_peak_rss_mb"]
            row("train_peak_rss_mb", f"training peak RSS <= {TRAIN_PEAK_MB[dataset]:,.0f} MB", peak, TRAIN_PEAK_MB[dataset],
                peak <= TRAIN_PEAK_MB[dataset], f"{peak:,.0f} MB")
    return rows


def markdown(results: dict[str, Any]) -> str:
    columns = ["accuracy", "macro_f1", "train_docs_per_s", "infer_docs_per_s", "explain_p50_ms", "explain_p95_ms",
               "peak_rss_mb", "train_peak_rss_mb", "train_seconds", "epochs"]
    lines = [f"# Benchmark {results['date']}{' (quick)' if results['quick'] else ''}", "",
             f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores", ""]
    for dataset, systems in results["datasets"].items():
        lines += [f"## {dataset}", "", "| system | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for system, values in systems.items():
            lines.append(f"| {system} | " + " | ".join(str(values.get(c, "")) for c in columns) + " |")
        han, reference = systems.get("han"), systems.get("reference_han")
        if han and reference:
            lines += ["", f"HAN / reference: training {han['train_docs_per_s'] / reference['train_docs_per_s']:.2f}x, "
                          f"inference {han['infer_docs_per_s'] / reference['infer_docs_per_s']:.2f}x, "
                          f"accuracy {han['accuracy']:.4f} vs {reference['accuracy']:.4f}"]
        if han and han.get("word2vec_seconds"):
            lines += [f"HAN word vectors: word2vec on the training split first, {han['word2vec_seconds']:.0f} s "
                      "(not in train_seconds; the reference HAN starts from random vectors)"]
        if han and "flops" in han:
            lines += [f"HAN training FLOP/s on real tokens: {han['flops']['fraction_of_matmul']:.1%} of a dense matmul's"]
        rows = results.get("targets", {}).get(dataset)
        if rows:
            lines += ["", "Targets (issue #9)" + (": a quick run's subsample, not the full dataset the targets are for"
                                                 if results["quick"] else ""), "",
                      "| target | this run | met |", "|---|---|---|"]
            lines += [f"| {r['target']} | {r['shown']} | {'yes' if r['met'] else '**no**'} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_PER_CLASS} documents per class, "
                                                             "2 epochs")
    parser.add_argument("--datasets", default="bbc,imdb", help="comma-separated, of: " + ", ".join(DATASETS))
    parser.add_argument("--per-class", type=int, default=QUICK_PER_CLASS,
                        help=f"documents per class (and split) with --quick (default {QUICK_PER_CLASS})")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, of: " + ", ".join(SYSTEMS))
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "benchmarks" / "results",
                        help="folder for <date>.json and <date>.md (default benchmarks/results/)")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", choices=list(DATASETS), help=argparse.SUPPRESS)
    parser.add_argument("--data-path", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.dataset, args.quick, args.data_path, args.overrides)

    datasets = [d for d in args.datasets.split(",") if d]
    systems = [s for s in args.systems.split(",") if s]
    unknown = [d for d in datasets if d not in DATASETS] + [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown dataset or system: {', '.join(unknown)}")
    from pipeline.stages import preprocess

    date = dt.date.today().isoformat()
    results: dict[str, Any] = {"date": date, "quick": args.quick, "machine": machine(), "datasets": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{date}{'-quick' if args.quick else ''}"
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    with tempfile.TemporaryDirectory(prefix="han-bench-") as scratch:
        for dataset in datasets:
            data_path = None
            if args.quick:
                source = data_root() / ("bbc" if dataset == "bbc" else "aclImdb.tar.gz")
                data_path = str(quick_corpus(dataset, source, Path(scratch), args.per_class))
            config = bench_config(dataset, args.quick, data_path)
            results.setdefault("runtime", config.runtime.model_dump())  # TensorFlow's threads, for every system
            log(f"{dataset}: preprocessing ({config.resolved_data_path()})")
            preprocess.run(config)
            extra = limits_at_least_reference(config)
            if extra:
                log(f"{dataset}: the p95 limits are below the reference's 15 x 40; preprocessing again with {extra}")
                config = bench_config(dataset, args.quick, data_path, extra)
                preprocess.run(config)
            results["datasets"][dataset] = {}
            for system in systems:
                log(f"{dataset}: {system} ...")
                command = [sys.executable, "-m", "benchmarks.compare", "--child", system, "--dataset", dataset]
                command += ["--quick", "--data-path", data_path] if args.quick else []
                command += [arg for item in extra for arg in ("--set", item)]
                started = time.perf_counter()
                done = subprocess.run(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    log(f"{dataset}: {system} failed (exit {done.returncode}); see its output above")
                    return 1
                line = next(line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX))
                results["datasets"][dataset][system] = json.loads(line.removeprefix(RESULT_PREFIX))
                results.setdefault("targets", {})[dataset] = targets(dataset, results["datasets"][dataset])
                log(f"{dataset}: {system} done in {time.perf_counter() - started:.0f}s: "
                    f"{json.dumps(results['datasets'][dataset][system])}")
                # Written after every system: an interrupted run keeps what it measured.
                json_path.write_text(json.dumps(results, indent=2) + "\n")
                md_path.write_text(markdown(results))
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown(results))
    _track(results, json_path, md_path)
    print(md_path.read_text())
    log(f"results in {json_path} and {md_path}")
    return 0


def _track(results: dict[str, Any], *paths: Path) -> None:
    from pipeline.tracking import connect, flatten

    mlflow = connect()
    mlflow.set_experiment("benchmarks")
    with mlflow.start_run(run_name=f"bench-{results['date']}{'-quick' if results['quick'] else ''}"):
        mlflow.log_params(flatten(results["machine"], "machine."))
        metrics = {f"{d}.{s}.{k}": float(v) for d, systems in results["datasets"].items()
                   for s, values in systems.items() for k, v in values.items() if isinstance(v, int | float)}
        metrics.update({f"{d}.target_met.{r['key']}": float(r["met"]) for d, rows in results.get("targets", {}).items()
                        for r in rows})
        mlflow.log_metrics(metrics)
        for path in paths:
            mlflow.log_artifact(str(path))


if __name__ == "__main__":
    sys.exit(main())
