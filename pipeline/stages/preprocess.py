"""Preprocessing stage: raw documents -> validated, split, sentence-split, tokenized, encoded corpus.

Reads the configured source, quarantines what cannot be used (with where and why), assigns
train/validation/test splits, fits the sentence splitter and the vocabulary on the training
split only, and writes ragged encoded splits plus stats and a manifest, atomically, to
``artifacts/<name>/preprocess/``. An unchanged rerun is a no-op that says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import faults
from pipeline.artifacts import (
    MANIFEST,
    atomic_directory,
    output_hashes,
    outputs_intact,
    read_manifest,
    sha256_file,
    sha256_tree,
    write_json,
)
from pipeline.config import PipelineConfig
from pipeline.data import records
from pipeline.data.records import RawDocument, Rejected
from pipeline.progress import Progress

# Bump when the output format or the processing changes, so old outputs are not reused.
STAGE_VERSION = 1
SPLITS = ("train", "validation", "test")
# Below this many documents, worker processes cost more than they save.
_PARALLEL_MIN_DOCS = 2000
_CHUNK_DOCS = 250


class PreprocessError(RuntimeError):
    """The stage cannot produce a usable corpus; the message says why and what to do."""


@dataclass
class PreprocessResult:
    output_dir: Path
    manifest: dict[str, Any]
    skipped: bool


def _log(message: str) -> None:
    print(f"preprocess: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- reading
def _read(config: PipelineConfig):
    """All input records, and the reader's report of what it skipped or could not decode."""
    from pipeline.data.readers import ReadReport, read_documents

    report = ReadReport()
    if config.data.format == "demo":
        from pipeline.data import demo

        return list(demo.generate_demo_corpus(config.data.demo, seed=config.seed)), report

    path = config.resolved_data_path()
    assert path is not None  # the config validator requires data.path for every other format
    items: list[RawDocument | Rejected] = []
    with Progress("read documents") as progress:
        for item in read_documents(config.data, path, report=report):
            items.append(item)
            progress.advance()
    return items, report


# --------------------------------------------------------------------------- splits
def assign_splits(docs: Sequence[RawDocument], seed: int, validation: float, test: float) -> dict[str, list[int]]:
    """Indices of ``docs`` per split.

    The dataset's own split wins when it has one (IMDB's train/test); a missing validation
    split is then carved from train. Otherwise each class is shuffled from the seed and cut
    into train/validation/test, so every split keeps the class balance.
    """
    rng = np.random.default_rng(seed)
    own = [doc.split for doc in docs]
    splits: dict[str, list[int]] = {name: [] for name in SPLITS}

    def carve(indices: list[int], fractions: dict[str, float], remainder: str) -> None:
        by_label: dict[str, list[int]] = {}
        for i in indices:
            by_label.setdefault(docs[i].label or "", []).append(i)
        for label in sorted(by_label):
            members = np.array(by_label[label])
            rng.shuffle(members)
            start = 0
            for name, fraction in fractions.items():
                take = int(round(len(members) * fraction))
                splits[name].extend(members[start : start + take].tolist())
                start += take
            splits[remainder].extend(members[start:].tolist())

    if any(s is not None for s in own):
        for i, s in enumerate(own):
            if s in ("test", "validation"):
                splits[s].append(i)
        pool = [i for i, s in enumerate(own) if s not in ("test", "validation")]
        if splits["validation"]:
            splits["train"].extend(pool)
        else:
            carve(pool, {"validation": validation}, remainder="train")
    else:
        carve(list(range(len(docs))), {"test": test, "validation": validation}, remainder="train")
    return {name: sorted(indices) for name, indices in splits.items()}


# --------------------------------------------------------------------------- tokenizing
_WORKER_PROCESSOR = None


def _warm_worker() -> None:
    import pipeline.text  # noqa: F401  (NLTK's import is the slow part of a worker's start)


def _process_chunk(processor_path: str, texts: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    """Tokenize in a worker; each worker loads the processor (JSON) once, by path."""
    global _WORKER_PROCESSOR
    if _WORKER_PROCESSOR is None or _WORKER_PROCESSOR[0] != processor_path:
        from pipeline.text import TextProcessor

        _WORKER_PROCESSOR = (processor_path, TextProcessor.load(processor_path))
    return [_WORKER_PROCESSOR[1].sentences_and_tokens(text) for text in texts]


class _TokenizerPool:
    """Worker processes started early, so their start-up overlaps Punkt training.

    forkserver, not fork: safe even when the caller (a test, an Airflow task) has
    TensorFlow threads running.
    """

    def __init__(self, workers: int, documents: int) -> None:
        self.executor = None
        if workers > 1 and documents >= _PARALLEL_MIN_DOCS:
            self.executor = ProcessPoolExecutor(workers, mp_context=get_context("forkserver"))
            for _ in range(workers):
                self.executor.submit(_warm_worker)
            self.workers = workers

    def tokenize(self, processor, texts: list[str]) -> list[tuple[list[str], list[list[str]]]]:
        chunks = [texts[i : i + _CHUNK_DOCS] for i in range(0, len(texts), _CHUNK_DOCS)]
        results: list[tuple[list[str], list[list[str]]]] = []
        with Progress("tokenize documents", total=len(texts)) as progress:
            if self.executor is None:
                for chunk in chunks:
                    results.extend(processor.sentences_and_tokens(text) for text in chunk)
                    progress.advance(len(chunk))
                return results
            # Chunks carry the path of the processor's JSON, not the processor itself.
            with tempfile.TemporaryDirectory() as tmp:
                path = str(Path(tmp) / "text_processor.json")
                processor.save(path)
                for chunk_result in self.executor.map(_process_chunk, [path] * len(chunks), chunks):
                    results.extend(chunk_result)
                    progress.advance(len(chunk_result))
        return results

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


def _has_word(sentences: list[list[str]]) -> bool:
    """True when some token has a letter or digit (punctuation alone says nothing to classify)."""
    return any(ch.isalnum() for sentence in sentences for token in sentence for ch in token)


def _build_processor(config: PipelineConfig, train_texts: list[str]):
    from pipeline.text import SentenceSplitter, TextProcessor, WordTokenizer, normalize_text

    settings = config.preprocess
    splitter = None
    if settings.punkt.use_installed:
        splitter = SentenceSplitter.installed(settings.punkt.extra_abbreviations)
    if splitter is None:
        rng = np.random.default_rng(config.seed)
        sample = train_texts
        if len(sample) > settings.punkt.train_max_documents:
            picked = rng.choice(len(sample), settings.punkt.train_max_documents, replace=False)
            sample = [train_texts[i] for i in sorted(picked)]
        started = time.perf_counter()
        splitter = SentenceSplitter.train(
            (normalize_text(t, settings.unicode_normalization) for t in sample),
            settings.punkt.extra_abbreviations,
        )
        _log(f"trained a Punkt sentence splitter on {len(sample):,} training documents "
             f"in {time.perf_counter() - started:.1f}s (no installed Punkt data used)")
    else:
        _log("using the installed NLTK Punkt model")
    tokenizer = WordTokenizer(settings.tokenizer, lowercase=settings.lowercase)
    return TextProcessor(splitter, tokenizer, settings.unicode_normalization)


# --------------------------------------------------------------------------- stats
def _distribution(values: Sequence[int]) -> dict[str, float]:
    if not len(values):
        return {"count": 0}
    arr = np.asarray(values)
    return {
        "count": int(arr.size),
        "mean": round(float(arr.mean()), 3),
        "min": int(arr.min()),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": int(arr.max()),
    }


def _limits(config: PipelineConfig, train_docs: list[list[list[str]]]) -> dict[str, Any]:
    limits = config.preprocess.limits
    sentence_counts = [len(doc) for doc in train_docs]
    word_counts = [len(sentence) for doc in train_docs for sentence in doc]
    max_sentences = limits.max_sentences or max(1, math.ceil(np.percentile(sentence_counts, limits.percentile)))
    max_words = limits.max_words or max(1, math.ceil(np.percentile(word_counts, limits.percentile)))
    return {
        "max_sentences": int(max_sentences),
        "max_words": int(max_words),
        "source": {
            "max_sentences": "config" if limits.max_sentences else f"p{limits.percentile:g} of training split",
            "max_words": "config" if limits.max_words else f"p{limits.percentile:g} of training split",
        },
    }


def _encode_split(vocab, docs: list[list[list[str]]], max_sentences: int, max_words: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Ragged encoding: flat token ids + per-sentence lengths + per-document sentence counts."""
    tokens: list[int] = []
    sentence_lengths: list[int] = []
    document_lengths: list[int] = []
    total_tokens = kept_tokens = docs_cut = sentences_cut = 0
    for doc in docs:
        total_tokens += sum(len(s) for s in doc)
        if len(doc) > max_sentences:
            docs_cut += 1
        kept = doc[:max_sentences]
        document_lengths.append(len(kept))
        for sentence in kept:
            if len(sentence) > max_words:
                sentences_cut += 1
            ids = vocab.encode(sentence[:max_words])
            tokens.extend(ids)
            sentence_lengths.append(len(ids))
            kept_tokens += len(ids)
    arrays = {
        "tokens": np.asarray(tokens, dtype=np.int32),
        "sentence_lengths": np.asarray(sentence_lengths, dtype=np.int32),
        "document_lengths": np.asarray(document_lengths, dtype=np.int32),
    }
    truncation = {
        "documents_over_max_sentences": docs_cut,
        "sentences_over_max_words": sentences_cut,
        "tokens_total": total_tokens,
        "tokens_kept": kept_tokens,
        "tokens_cut_fraction": round(1 - kept_tokens / total_tokens, 6) if total_tokens else 0.0,
    }
    return arrays, truncation


# --------------------------------------------------------------------------- the stage
def _fingerprint(config: PipelineConfig, inputs: dict[str, str]) -> str:
    blob = json.dumps({"stage_version": STAGE_VERSION, "config": config.section_hash("name", "seed", "data", "preprocess"),
                       "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _input_hashes(config: PipelineConfig) -> dict[str, str]:
    if config.data.format == "demo":
        from pipeline.data import demo

        return {"demo-generator": sha256_file(Path(demo.__file__))}
    path = config.resolved_data_path()
    if path is None or not path.exists():
        raise PreprocessError(
            f"data.path {config.data.path!r} resolves to {path}, which does not exist. "
            "Set HAN_DATA_DIR to your dataset root or fix data.path in the config."
        )
    return {str(path): sha256_tree(path)}


def run(config: PipelineConfig, force: bool = False) -> PreprocessResult:
    """Run the stage; returns where the outputs are and the manifest."""
    from pipeline.data.validate import validate_documents, write_quarantine
    from pipeline.vocab import Vocabulary

    out_dir = config.stage_dir("preprocess")
    started = time.perf_counter()
    inputs = _input_hashes(config)
    fingerprint = _fingerprint(config, inputs)
    previous = read_manifest(out_dir)
    if not force and previous and previous.get("fingerprint") == fingerprint and outputs_intact(out_dir, previous):
        _log(f"inputs and config unchanged since {previous.get('created')}; nothing to do ({out_dir})")
        _track(config, out_dir, previous, cached=True)
        return PreprocessResult(out_dir, previous, skipped=True)

    items, read_report = _read(config)
    validation = validate_documents(items, config.data.labels, config.data.max_chars)
    kept, quarantined = list(validation.kept), list(validation.quarantined)

    labels = sorted({doc.label for doc in kept if doc.label is not None})
    if not items:
        raise PreprocessError(f"no documents in {config.resolved_data_path()} (data.format {config.data.format!r}): "
                              "the input is empty; check data.path and data.format")
    if not kept:
        raise PreprocessError(f"no usable documents: all {len(items):,} inputs were quarantined "
                              f"({dict(validation.counts()['by_reason'])}). Check data.path, data.format and the field names.")
    if len(labels) < 2:
        raise PreprocessError(f"only one label ({labels[0]!r}) among {len(kept):,} documents; a classifier needs at least two. "
                              "Check data.label_field and data.labels.")

    split_indices = assign_splits(kept, config.seed, config.preprocess.split.validation, config.preprocess.split.test)
    if not split_indices["train"]:
        raise PreprocessError("the training split is empty; lower preprocess.split.test/validation or add documents")
    train_texts = [kept[i].text for i in split_indices["train"]]
    pool = _TokenizerPool(config.preprocess.workers or os.cpu_count() or 1, len(kept))
    try:
        processor = _build_processor(config, train_texts)
        processed = pool.tokenize(processor, [doc.text for doc in kept])
    finally:
        pool.close()

    # A document whose text yields no word at all cannot be classified: quarantine it, visibly.
    empty = {i for i, (_, tokens) in enumerate(processed) if not _has_word(tokens)}
    for i in sorted(empty):
        doc = kept[i]
        quarantined.append(Rejected(doc.source, records.NO_TOKENS, "no word tokens after sentence splitting and tokenization",
                                    id=doc.id, label=doc.label))
    split_indices = {name: [i for i in idx if i not in empty] for name, idx in split_indices.items()}

    input_count = len(items)
    quarantine_fraction = len(quarantined) / input_count
    by_reason = Counter(r.reason for r in quarantined)
    counts = {"input": input_count, "kept": input_count - len(quarantined), "quarantined": len(quarantined),
              "by_reason": dict(sorted(by_reason.items()))}
    assert counts["input"] == counts["kept"] + counts["quarantined"] == sum(map(len, split_indices.values())) + len(quarantined)
    _log(f"{counts['input']:,} input, {counts['kept']:,} kept, {counts['quarantined']:,} quarantined {counts['by_reason'] or ''}")
    if quarantine_fraction > config.preprocess.max_quarantine_fraction:
        report = out_dir.parent / "preprocess-rejected.jsonl"
        report.parent.mkdir(parents=True, exist_ok=True)
        write_quarantine(report, quarantined)
        raise PreprocessError(
            f"{len(quarantined):,} of {input_count:,} inputs ({quarantine_fraction:.1%}) were quarantined, over the "
            f"limit preprocess.max_quarantine_fraction={config.preprocess.max_quarantine_fraction}. Reasons: {counts['by_reason']}. "
            f"See {report} for each record; fix the data or raise the limit."
        )

    train_tokens = [processed[i][1] for i in split_indices["train"]]
    token_counts: Counter[str] = Counter(tok for doc in train_tokens for sentence in doc for tok in sentence)
    vocab = Vocabulary.from_counts(token_counts, config.preprocess.vocab.min_count, config.preprocess.vocab.max_size)
    limits = _limits(config, train_tokens)
    label_ids = {label: i for i, label in enumerate(labels)}

    stats: dict[str, Any] = {
        "documents": {name: len(idx) for name, idx in split_indices.items()},
        "labels": labels,
        "class_balance": {name: dict(sorted(Counter(kept[i].label for i in idx).items())) for name, idx in split_indices.items()},
        "split_source": "dataset" if any(doc.split for doc in kept) else f"stratified from seed {config.seed}",
        "limits": limits,
        "vocabulary": {"size": len(vocab), "min_count": config.preprocess.vocab.min_count,
                       "max_size": config.preprocess.vocab.max_size, "training_types": len(token_counts)},
        "decode_error_bytes": read_report.decode_error_bytes,
        "skipped_files": len(read_report.skipped_files),
        "files_read": read_report.files_read,
        "blank_lines": read_report.blank_lines,
        "documents_with_decode_errors": read_report.documents_with_decode_errors,
        "quarantine": counts["by_reason"],
        "splits": {},
    }

    with atomic_directory(out_dir) as staging:
        for name, indices in split_indices.items():
            docs_tokens = [processed[i][1] for i in indices]
            arrays, truncation = _encode_split(vocab, docs_tokens, limits["max_sentences"], limits["max_words"])
            np.savez(staging / f"{name}.npz",
                     labels=np.asarray([label_ids[kept[i].label] for i in indices], dtype=np.int32),
                     ids=np.asarray([kept[i].id for i in indices], dtype=str), **arrays)
            with open(staging / f"{name}.documents.jsonl", "w", encoding="utf-8") as handle:
                for i in indices:
                    doc = kept[i]
                    row = {"id": doc.id, "label": doc.label, "source": doc.source, "sentences": processed[i][0]}
                    if doc.meta:
                        row["meta"] = doc.meta
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            faults.point("preprocess:writing")
            stats["splits"][name] = {
                "sentences_per_document": _distribution([len(processed[i][1]) for i in indices]),
                "words_per_sentence": _distribution([len(s) for i in indices for s in processed[i][1]]),
                "oov_rate": round(vocab.oov_rate(docs_tokens), 6) if docs_tokens else 0.0,
                "truncation": truncation,
            }
        vocab.save(staging / "vocab.json")
        write_json(staging / "text_processor.json", processor.to_json())
        write_json(staging / "labels.json", labels)
        write_quarantine(staging / "quarantine.jsonl", quarantined)
        if read_report.skipped_files:
            write_json(staging / "skipped_files.json", read_report.skipped_files)
        elapsed = time.perf_counter() - started
        stats["seconds"] = round(elapsed, 3)
        stats["documents_per_second"] = round(input_count / elapsed, 1)
        write_json(staging / "stats.json", stats)
        manifest = {
            "stage": "preprocess",
            "stage_version": STAGE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": counts,
            "config_hash": config.section_hash("name", "seed", "data", "preprocess"),
            "fingerprint": fingerprint,
            "inputs": inputs,
            "outputs": output_hashes(staging),
        }
        write_json(staging / MANIFEST, manifest)

    _log(f"wrote {out_dir} in {elapsed:.1f}s ({stats['documents_per_second']:,.0f} documents/s); "
         f"vocabulary {len(vocab):,}, limits {limits['max_sentences']} sentences x {limits['max_words']} words")
    _track(config, out_dir, manifest, cached=False)
    return PreprocessResult(out_dir, manifest, skipped=False)


def _track(config: PipelineConfig, out_dir: Path, manifest: dict[str, Any], cached: bool) -> None:
    """Log the stage to MLflow: counts and stats as metrics, stats and quarantine as artifacts."""
    import mlflow

    from pipeline.tracking import stage_run

    with stage_run(config, "preprocess", {"han.cached": str(cached).lower()}):
        counts = manifest["counts"]
        metrics = {f"counts.{k}": float(v) for k, v in counts.items() if isinstance(v, int)}
        metrics.update({f"quarantine.{k}": float(v) for k, v in counts.get("by_reason", {}).items()})
        stats_path = out_dir / "stats.json"
        if stats_path.is_file():
            stats = json.loads(stats_path.read_text())
            metrics["vocabulary.size"] = float(stats["vocabulary"]["size"])
            metrics["limits.max_sentences"] = float(stats["limits"]["max_sentences"])
            metrics["limits.max_words"] = float(stats["limits"]["max_words"])
            metrics["documents_per_second"] = float(stats["documents_per_second"])
            for split, info in stats["splits"].items():
                metrics[f"{split}.documents"] = float(stats["documents"][split])
                metrics[f"{split}.oov_rate"] = float(info["oov_rate"])
                metrics[f"{split}.tokens_cut_fraction"] = float(info["truncation"]["tokens_cut_fraction"])
                metrics[f"{split}.sentences_per_document.mean"] = float(info["sentences_per_document"].get("mean", 0.0))
            mlflow.log_artifact(str(stats_path), "preprocess")
        mlflow.log_metrics(metrics)
        for name in (MANIFEST, "quarantine.jsonl", "labels.json"):
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name), "preprocess")
