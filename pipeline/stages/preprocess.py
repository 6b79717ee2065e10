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
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
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
from pipeline.data.records import RawDocument, Rejected, label_members
from pipeline.progress import Progress
from pipeline.tracking import check_before_commit

# Bump when the output format or the processing changes, so old outputs are not reused.
STAGE_VERSION = 2  # 2: sharded outputs (<split>-NNNNN.npz)
SPLITS = ("train", "validation", "test")
# Below this many documents, worker processes cost more than they save.
_PARALLEL_MIN_DOCS = 2000
_CHUNK_DOCS = 250
# A label with fewer training documents than this gets a warning: too few to learn it well.
FEW_TRAINING_DOCUMENTS = 5


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
@dataclass(slots=True)
class _Kept:
    """What stays in memory per kept document (the text waits in a spool file): enough to assign splits."""

    label: str | tuple[str, ...]  # a tuple with data.multilabel
    split: str | None


def _records(config: PipelineConfig, report):
    if config.data.format == "demo":
        from pipeline.data import demo

        return demo.generate_demo_corpus(config.data.demo, seed=config.seed)
    from pipeline.data.readers import read_corpus

    paths = config.resolved_data_paths()
    assert paths  # the config validator requires data.path for every other format
    return read_corpus(config.data, paths, report=report)


def _scan(config: PipelineConfig, spool: Path, dropped: Counter | None = None) -> tuple[list[_Kept], list[Rejected], Any, int]:
    """Pass 1: read and validate every input record once; kept documents are spooled to disk in order.

    ``dropped`` counts what ``preprocess.drop_header`` / ``drop_lines`` will take out of the kept
    documents (``documents``, ``lines``, ``characters``); the text processor drops it when it tokenizes.
    """
    from pipeline.data.readers import ReadReport
    from pipeline.data.validate import Validator

    report = ReadReport()
    validator = Validator(config.data.labels, config.data.max_chars, config.preprocess.unicode_normalization)
    line_filter = _line_filter(config)
    kept: list[_Kept] = []
    quarantined: list[Rejected] = []
    count = 0
    with open(spool, "w", encoding="utf-8") as out, Progress("read documents") as progress:
        for record in _records(config, report):
            count += 1
            progress.advance()
            outcome = validator.check(record)
            if isinstance(outcome, Rejected):
                quarantined.append(outcome)
                continue
            label = (sys.intern(outcome.label) if isinstance(outcome.label, str)
                     else tuple(sys.intern(member) for member in outcome.label))
            kept.append(_Kept(label, outcome.split))
            if line_filter and dropped is not None:
                _, lines, characters = line_filter.apply(outcome.text)
                dropped.update(documents=lines > 0, lines=lines, characters=characters)
            out.write(json.dumps({"id": outcome.id, "label": outcome.label, "source": outcome.source,
                                  "text": outcome.text, "meta": outcome.meta}, ensure_ascii=False) + "\n")
    return kept, quarantined, report, count


def _spooled(path: Path):
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def _blocks(rows, size: int):
    block = []
    for row in rows:
        block.append(row)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


# --------------------------------------------------------------------------- splits
def assign_splits(docs: Sequence[RawDocument], seed: int, validation: float, test: float) -> dict[str, list[int]]:
    """Indices of ``docs`` per split.

    The dataset's own split wins when it has one (IMDB's train/test); a validation or test split
    it lacks is then carved from train. Otherwise each class is shuffled from the seed and cut
    into train/validation/test, so every split keeps the class balance. A multi-label document is
    placed with its rarest label (fewest documents), so that rare labels reach every split.
    """
    rng = np.random.default_rng(seed)
    own = [doc.split for doc in docs]
    splits: dict[str, list[int]] = {name: [] for name in SPLITS}
    frequency = Counter(label for doc in docs if not isinstance(doc.label, str) and doc.label for label in doc.label)

    def stratum(label: str | tuple[str, ...] | None) -> str:
        if label is None or isinstance(label, str):
            return label or ""
        return min(label, key=lambda member: (frequency[member], member))

    def carve(indices: list[int], fractions: dict[str, float], remainder: str) -> None:
        by_label: dict[str, list[int]] = {}
        for i in indices:
            by_label.setdefault(stratum(docs[i].label), []).append(i)
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
        missing = {name: fraction for name, fraction in (("test", test), ("validation", validation)) if not splits[name]}
        if missing:
            carve(pool, missing, remainder="train")
        else:
            splits["train"].extend(pool)
    else:
        carve(list(range(len(docs))), {"test": test, "validation": validation}, remainder="train")
    return {name: sorted(indices) for name, indices in splits.items()}


def _empty_training_split(config: PipelineConfig, kept: Sequence[_Kept], report) -> str:
    """Why no document is in the training split, and what to change: the advice depends on who split the data."""
    found = Counter(doc.split or "(none)" for doc in kept)
    shown = ", ".join(f"{split} {n:,}" for split, n in sorted(found.items()))
    if isinstance(config.data.path, dict):
        return (f"the training split is empty: data.path.train ({config.data.path['train']}) holds no usable document "
                f"(kept per split: {shown}); point data.path.train at the training data")
    if any(doc.split for doc in kept):
        values = ", ".join(f"{value!r} = {split}" for value, split in sorted(report.split_values.items()))
        where = (f"data.split_field {config.data.split_field!r}" if config.data.split_field
                 else "the split folders (<split>/<label>/...)")
        return (f"the training split is empty: {where} decides the split (preprocess.split's fractions are not "
                f"used then), and no kept document is in train; values found: {values} (kept: {shown}). Mark the "
                f"training documents with one of {', '.join(config.data.split_values['train'])} (or add their value "
                f"to data.split_values.train)")
    return "the training split is empty; lower preprocess.split.test/validation or add documents"


def split_table(labels: Sequence[str], label_of: np.ndarray, split_of: np.ndarray) -> dict[str, dict[str, int]]:
    """Documents per label and split, ``{label: {"train": n, "validation": n, "test": n}}``;
    ``label_of``/``split_of``: each document's index into ``labels``/``SPLITS`` (-1: quarantined)."""
    counts = np.zeros((len(labels), len(SPLITS)), dtype=np.int64)
    placed = split_of >= 0
    np.add.at(counts, (label_of[placed], split_of[placed]), 1)
    return {label: dict(zip(SPLITS, (int(n) for n in counts[i]), strict=True)) for i, label in enumerate(labels)}


def _own_split(config: PipelineConfig) -> str:
    if isinstance(config.data.path, dict):
        return "the data's own split (data.path.<split>, a file per split)"
    if config.data.split_field:
        return f"the data's own split (data.split_field {config.data.split_field!r})"
    return "the data's own split (the split folders <split>/<label>/...)"


def _listed(table: dict[str, dict[str, int]], labels: Sequence[str], shown: int = 10) -> str:
    """``'c' (train 0, validation 1, test 2), ...``: the first ``shown`` labels and their documents per split."""
    parts = [f"{label!r} ({', '.join(f'{name} {table[label][name]:,}' for name in SPLITS)})" for label in labels[:shown]]
    return ", ".join(parts) + (f" and {len(labels) - shown} more" if len(labels) > shown else "")


def _labels_have(labels: Sequence[str]) -> tuple[str, str]:
    """``("a label has", "it")`` or ``("3 labels have", "them")``."""
    return ("a label has", "it") if len(labels) == 1 else (f"{len(labels)} labels have", "them")


def check_splits(config: PipelineConfig, table: dict[str, dict[str, int]], own: set[str]) -> list[str]:
    """Refuse splits a model cannot be learnt from or scored on; return the warnings for splits it can, badly.

    Errors: a label without training documents (the model could never predict it), and an empty test
    split when ``preprocess.split.test`` asks for one. Warnings: labels with fewer than
    ``FEW_TRAINING_DOCUMENTS`` training documents, and labels without test documents (their test
    scores cannot be measured). ``own``: the splits the data itself marks; their fixes are made in the
    data, those of the splits cut by ``preprocess.split``'s fractions in the config.
    """
    fractions = config.preprocess.split
    # round(n * f) > 0 needs n * f > 0.5: the fewest documents a label needs for one in a split of fraction f.
    need = math.floor(0.5 / fractions.test) + 1 if fractions.test > 0 else None
    carved = ("the data's own split has no test documents, so preprocess.split.test carves them from its training "
              "documents; " if own else "")
    untrained = [label for label, n in table.items() if n["train"] == 0]
    if untrained:
        has, them = _labels_have(untrained)
        fix = (f"add training documents for {them} to {_own_split(config)}" if "train" in own else
               f"add documents, or lower preprocess.split.test / preprocess.split.validation (now {fractions.test:g} / "
               f"{fractions.validation:g})")
        raise PreprocessError(f"{has} no training documents, so the model cannot learn {them}: {_listed(table, untrained)}. "
                              f"Fix: {fix}; or leave {them} out with data.labels (listing the labels to keep), or merge "
                              f"{them} into another label")
    test_total = sum(n["test"] for n in table.values())
    if test_total == 0 and fractions.test > 0:
        if "test" in own:
            raise PreprocessError(f"the test split is empty: no test document of {_own_split(config)} was kept; add "
                                  "test documents to it (the model cannot be evaluated without them)")
        largest = max(n["train"] + n["validation"] for n in table.values())
        raise PreprocessError(
            f"the test split is empty: {carved}preprocess.split.test={fractions.test:g} of each label rounds to no "
            f"document ({len(table)} labels, the largest with {largest:,} documents; a label needs {need} for one test "
            "document). Fix: add documents, merge small labels, or raise preprocess.split.test")
    warnings = []
    few = [label for label, n in table.items() if n["train"] < FEW_TRAINING_DOCUMENTS]
    if few:
        has, them = _labels_have(few)
        warnings.append(f"{has} fewer than {FEW_TRAINING_DOCUMENTS} training documents, too few to learn {them} well: "
                        f"{_listed(table, few)}; add documents for {them}, or merge {them} into another label")
    untested = [label for label, n in table.items() if n["test"] == 0]
    if untested and test_total:
        has, them = _labels_have(untested)
        fix = (f"add test documents for {them} to {_own_split(config)}" if "test" in own else
               f"{carved}add documents (a label needs {need} for one test document at preprocess.split.test="
               f"{fractions.test:g}), or raise preprocess.split.test")
        warnings.append(f"{has} no test documents, so the test scores cannot measure {them}: "
                        f"{_listed(table, untested)}; {fix}")
    return warnings


# --------------------------------------------------------------------------- tokenizing
_WORKER_PROCESSOR = None


def _warm_worker() -> None:
    import pipeline.data.text  # noqa: F401  (NLTK's import is the slow part of a worker's start)


def _process_chunk(processor_path: str, texts: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    """Tokenize in a worker; each worker loads the processor (JSON) once, by path."""
    global _WORKER_PROCESSOR
    if _WORKER_PROCESSOR is None or _WORKER_PROCESSOR[0] != processor_path:
        from pipeline.data.text import TextProcessor

        _WORKER_PROCESSOR = (processor_path, TextProcessor.load(processor_path))
    return [_WORKER_PROCESSOR[1].sentences_and_tokens(text) for text in texts]


class _TokenizerPool:
    """Worker processes started early, so their start-up overlaps Punkt training.

    forkserver, not fork: safe even when the caller (a test, an Airflow task) has
    TensorFlow threads running. The processor goes to the workers once, as a JSON file.
    """

    def __init__(self, workers: int, documents: int) -> None:
        self.executor = None
        self.workers = 1
        self._folder = None
        if workers > 1 and documents >= _PARALLEL_MIN_DOCS:
            self.executor = ProcessPoolExecutor(workers, mp_context=get_context("forkserver"))
            for _ in range(workers):
                self.executor.submit(_warm_worker)
            self.workers = workers

    def tokenize(self, processor, rows):
        """``(row, (sentences, tokens))`` for each spooled row, in order.

        With workers, chunks are submitted ahead (at most ``4 x workers`` in flight), so the
        workers keep tokenizing while this process handles finished chunks, and memory holds
        only the chunks in flight.
        """
        if self.executor is None:
            for row in rows:
                yield row, processor.sentences_and_tokens(row["text"])
            return
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory()
            processor.save(str(Path(self._folder.name) / "text_processor.json"))
        path = str(Path(self._folder.name) / "text_processor.json")
        in_flight: deque = deque()
        for chunk in _blocks(rows, _CHUNK_DOCS):
            in_flight.append((chunk, self.executor.submit(_process_chunk, path, [row["text"] for row in chunk])))
            if len(in_flight) >= 4 * self.workers:
                yield from self._finish(in_flight.popleft())
        while in_flight:
            yield from self._finish(in_flight.popleft())

    @staticmethod
    def _finish(item):
        chunk, future = item
        yield from zip(chunk, future.result(), strict=True)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)
        if self._folder is not None:
            self._folder.cleanup()


def _has_word(sentences: list[list[str]]) -> bool:
    """True when some token has a letter or digit (punctuation alone says nothing to classify)."""
    return any(ch.isalnum() for sentence in sentences for token in sentence for ch in token)


def _dropped_note(processor, text: str) -> str:
    """What the line filter took out of a document left without words, for its quarantine detail."""
    lines = processor.line_filter.apply(text)[1] if processor.line_filter is not None else 0
    return f" (preprocess.drop_header / drop_lines dropped {lines} of its lines)" if lines else ""


def _line_filter(config: PipelineConfig):
    from pipeline.data.text import LineFilter

    return LineFilter(config.preprocess.drop_header, config.preprocess.drop_lines)


def _build_processor(config: PipelineConfig, train_indices: list[int], spool: Path):
    """The text processor; Punkt, when trained, learns from (a seeded sample of) the training split."""
    from pipeline.data.text import SentenceSplitter, TextProcessor, WordTokenizer, normalize_text

    settings = config.preprocess
    splitter = None
    if settings.punkt.use_installed:
        splitter = SentenceSplitter.installed(settings.punkt.extra_abbreviations)
    if splitter is None:
        rng = np.random.default_rng(config.seed)
        chosen = train_indices
        if len(chosen) > settings.punkt.train_max_documents:
            picked = rng.choice(len(chosen), settings.punkt.train_max_documents, replace=False)
            chosen = [train_indices[i] for i in sorted(picked)]
        wanted = set(chosen)
        sample = [row["text"] for i, row in enumerate(_spooled(spool)) if i in wanted]
        started = time.perf_counter()
        line_filter = _line_filter(config)
        splitter = SentenceSplitter.train(
            (normalize_text(line_filter.apply(t)[0], settings.unicode_normalization) for t in sample),
            settings.punkt.extra_abbreviations,
        )
        _log(f"trained a Punkt sentence splitter on {len(sample):,} training documents "
             f"in {time.perf_counter() - started:.1f}s (no installed Punkt data used)")
    else:
        _log("using the installed NLTK Punkt model")
    tokenizer = WordTokenizer(settings.tokenizer, lowercase=settings.lowercase)
    return TextProcessor(splitter, tokenizer, settings.unicode_normalization, _line_filter(config))


# --------------------------------------------------------------------------- stats
def _percentile(counts: Counter[int], q: float) -> float:
    """``numpy.percentile`` (linear interpolation) of the values a histogram holds, without expanding it."""
    values = np.array(sorted(counts), dtype=np.float64)
    cumulative = np.cumsum([counts[int(v)] for v in values])
    rank = q / 100 * (cumulative[-1] - 1)
    lower, upper = int(np.floor(rank)), int(np.ceil(rank))
    at = lambda r: values[np.searchsorted(cumulative, r + 1)]  # noqa: E731 (the value of the r-th smallest item)
    return float(at(lower) + (at(upper) - at(lower)) * (rank - lower))


def _distribution(counts: Counter[int]) -> dict[str, float]:
    """Summary of a histogram {value: how many}: count, mean, min, percentiles, max."""
    total = sum(counts.values())
    if not total:
        return {"count": 0}
    return {
        "count": int(total),
        "mean": round(sum(v * c for v, c in counts.items()) / total, 3),
        "min": int(min(counts)),
        "p50": _percentile(counts, 50),
        "p90": _percentile(counts, 90),
        "p95": _percentile(counts, 95),
        "p99": _percentile(counts, 99),
        "max": int(max(counts)),
    }


def _limits(config: PipelineConfig, sentence_counts: Counter[int], word_counts: Counter[int]) -> dict[str, Any]:
    limits = config.preprocess.limits
    max_sentences = limits.max_sentences or max(1, math.ceil(_percentile(sentence_counts, limits.percentile)))
    max_words = limits.max_words or max(1, math.ceil(_percentile(word_counts, limits.percentile)))
    return {
        "max_sentences": int(max_sentences),
        "max_words": int(max_words),
        "source": {
            "max_sentences": "config" if limits.max_sentences else f"p{limits.percentile:g} of training split",
            "max_words": "config" if limits.max_words else f"p{limits.percentile:g} of training split",
        },
    }


class _SplitStats:
    """What the stats say about one split, gathered one document at a time."""

    def __init__(self) -> None:
        self.sentences: Counter[int] = Counter()
        self.words: Counter[int] = Counter()
        self.labels: Counter[str] = Counter()
        self.tokens_total = self.tokens_kept = self.unknown = 0
        self.docs_cut = self.sentences_cut = 0

    def count(self, tokens: list[list[str]]) -> None:
        self.sentences[len(tokens)] += 1
        self.words.update(len(sentence) for sentence in tokens)

    def encode(self, vocab, tokens: list[list[str]], max_sentences: int, max_words: int) -> list[list[int]]:
        """The document's ids, cut to the limits; counts what was cut and what is out of vocabulary."""
        self.tokens_total += sum(len(s) for s in tokens)
        if len(tokens) > max_sentences:
            self.docs_cut += 1
        encoded = []
        for sentence in tokens[:max_sentences]:
            if len(sentence) > max_words:
                self.sentences_cut += 1
            ids = vocab.encode(sentence[:max_words])
            encoded.append(ids)
            self.tokens_kept += len(ids)
        self.unknown += sum(1 for sentence in tokens for token in sentence if token not in vocab)
        return encoded

    def summary(self) -> dict[str, Any]:
        return {
            "sentences_per_document": _distribution(self.sentences),
            "words_per_sentence": _distribution(self.words),
            "oov_rate": round(self.unknown / self.tokens_total, 6) if self.tokens_total else 0.0,
            "truncation": {
                "documents_over_max_sentences": self.docs_cut,
                "sentences_over_max_words": self.sentences_cut,
                "tokens_total": self.tokens_total,
                "tokens_kept": self.tokens_kept,
                "tokens_cut_fraction": round(1 - self.tokens_kept / self.tokens_total, 6) if self.tokens_total else 0.0,
            },
        }


# --------------------------------------------------------------------------- the stage
def _fingerprint(config: PipelineConfig, inputs: dict[str, str]) -> str:
    blob = json.dumps({"stage_version": STAGE_VERSION, "config": config.section_hash("name", "seed", "data", "preprocess"),
                       "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _input_hashes(config: PipelineConfig) -> dict[str, str]:
    if config.data.format == "demo":
        from pipeline.data import demo

        return {"demo-generator": sha256_file(Path(demo.__file__))}
    hashes = {}
    for split, path in config.resolved_data_paths().items():
        if not path.exists():
            key = "data.path" if split is None else f"data.path.{split}"
            raise PreprocessError(
                f"{key} {config.data.data_paths()[split]!r} resolves to {path}, which does not exist. "
                "Set HAN_DATA_DIR to your dataset root or fix data.path in the config."
            )
        hashes[str(path)] = sha256_tree(path)
    return hashes


def run(config: PipelineConfig, force: bool = False) -> PreprocessResult:
    """Run the stage; returns where the outputs are and the manifest.

    Streams: the input is read once, and the kept documents wait in spool files inside the
    staging folder between passes (split assignment, Punkt training, tokenization, encoding), so
    memory holds a few bytes per document plus the vocabulary counts, not the corpus.
    """
    out_dir = config.stage_dir("preprocess")
    started = time.perf_counter()
    inputs = _input_hashes(config)
    fingerprint = _fingerprint(config, inputs)
    previous = read_manifest(out_dir)
    if not force and previous and previous.get("fingerprint") == fingerprint and outputs_intact(out_dir, previous):
        _log(f"inputs and config unchanged since {previous.get('created')}; nothing to do ({out_dir})")
        for warning in previous.get("warnings", []):
            _log(f"warning: {warning}")
        _track(config, out_dir, previous, cached=True, started=started)
        return PreprocessResult(out_dir, previous, skipped=True)

    with atomic_directory(out_dir) as staging:
        spool = staging / ".spool"
        spool.mkdir()
        manifest, stats = _process(config, staging, spool, out_dir, fingerprint, inputs, started)
        shutil.rmtree(spool)
        manifest["outputs"] = output_hashes(staging)
        write_json(staging / MANIFEST, manifest)
        check_before_commit()  # a locked or full tracking store: refused now, not after the commit

    limits = stats["limits"]
    _log(f"wrote {out_dir} in {stats['seconds']:.1f}s ({stats['documents_per_second']:,.0f} documents/s); "
         f"vocabulary {stats['vocabulary']['size']:,}, limits {limits['max_sentences']} sentences x {limits['max_words']} words")
    _track(config, out_dir, manifest, cached=False, started=started)
    return PreprocessResult(out_dir, manifest, skipped=False)


def _process(config: PipelineConfig, staging: Path, spool: Path, out_dir: Path, fingerprint: str,
             inputs: dict[str, str], started: float) -> tuple[dict[str, Any], dict[str, Any]]:
    from pipeline.data.shards import ShardWriter
    from pipeline.data.validate import write_quarantine
    from pipeline.data.vocab import Vocabulary

    kept_spool, tokens_spool = spool / "kept.jsonl", spool / "tokens.jsonl"
    dropped: Counter[str] = Counter(documents=0, lines=0, characters=0)
    kept, quarantined, read_report, input_count = _scan(config, kept_spool, dropped)
    labels = sorted({label for doc in kept for label in label_members(doc.label)})
    if not input_count:
        shown = ", ".join(str(path) for path in config.resolved_data_paths().values())
        raise PreprocessError(f"no documents in {shown} (data.format {config.data.format!r}): "
                              "the input is empty; check data.path and data.format")
    if not kept:
        by_reason = dict(Counter(r.reason for r in quarantined))
        raise PreprocessError(f"no usable documents: all {input_count:,} inputs were quarantined "
                              f"({by_reason}). Check data.path, data.format and the field names.")
    if len(labels) < 2:
        raise PreprocessError(f"only one label ({labels[0]!r}) among {len(kept):,} documents; a classifier needs at least two. "
                              "Check data.label_field and data.labels.")

    split_indices = assign_splits(kept, config.seed, config.preprocess.split.validation, config.preprocess.split.test)
    if not split_indices["train"]:
        raise PreprocessError(_empty_training_split(config, kept, read_report))
    split_source = "dataset" if any(doc.split for doc in kept) else f"stratified from seed {config.seed}"
    own_splits = {doc.split for doc in kept if doc.split}
    label_code = {label: i for i, label in enumerate(labels)}
    # One (document, label) pair per label a document has: one per document unless multi-label.
    member_doc = np.fromiter((i for i, doc in enumerate(kept) for _ in label_members(doc.label)), dtype=np.int64)
    member_label = np.fromiter((label_code[label] for doc in kept for label in label_members(doc.label)), dtype=np.int32)
    if isinstance(config.data.path, dict):
        _log("the dataset's own split, a data.path per split: " + ", ".join(f"{split} = {path}" for split, path
                                                                          in config.data.data_paths().items()))
    elif read_report.split_values:
        _log("the dataset's own split: " + ", ".join(f"{value!r} = {split}" for value, split
                                                      in sorted(read_report.split_values.items())))
    if dropped["lines"]:
        _log(f"preprocess.drop_header / drop_lines: {dropped['lines']:,} lines ({dropped['characters']:,} characters) "
             f"dropped from {dropped['documents']:,} documents before sentence splitting")
    split_of = np.full(len(kept), -1, dtype=np.int8)
    for code, name in enumerate(SPLITS):
        split_of[split_indices[name]] = code
    del kept  # from here on, documents are read back from the spool

    # Pass 2 and 3: fit the sentence splitter, then tokenize everything once, spooling the tokens;
    # the training split's token and length counts build the vocabulary and the limits.
    split_stats = {name: _SplitStats() for name in SPLITS}
    token_counts: Counter[str] = Counter()
    pool = _TokenizerPool(config.preprocess.workers or os.cpu_count() or 1, len(split_of))
    try:
        processor = _build_processor(config, split_indices["train"], kept_spool)
        index = 0
        with open(tokens_spool, "w", encoding="utf-8") as out, \
                Progress("tokenize documents", total=len(split_of)) as progress:
            for row, (sentences, tokens) in pool.tokenize(processor, _spooled(kept_spool)):
                if not _has_word(tokens):
                    # A document whose text yields no word at all cannot be classified: quarantine it, visibly.
                    quarantined.append(Rejected(row["source"], records.NO_TOKENS,
                                                "no word tokens after sentence splitting and tokenization"
                                                + _dropped_note(processor, row["text"]),
                                                id=row["id"], label=row["label"]))
                    split_of[index] = -1
                else:
                    name = SPLITS[split_of[index]]
                    split_stats[name].count(tokens)
                    if name == "train":
                        token_counts.update(token for sentence in tokens for token in sentence)
                    out.write(json.dumps([sentences, tokens], ensure_ascii=False) + "\n")
                index += 1
                progress.advance()
    finally:
        pool.close()

    quarantine_fraction = len(quarantined) / input_count
    by_reason = Counter(r.reason for r in quarantined)
    split_counts = {name: int(np.sum(split_of == code)) for code, name in enumerate(SPLITS)}
    counts = {"input": input_count, "kept": input_count - len(quarantined), "quarantined": len(quarantined),
              "by_reason": dict(sorted(by_reason.items()))}
    assert counts["input"] == counts["kept"] + counts["quarantined"] == sum(split_counts.values()) + len(quarantined)
    _log(f"{counts['input']:,} input = {counts['kept']:,} kept + {counts['quarantined']:,} quarantined"
         + (f" {counts['by_reason']}" if counts["by_reason"] else ""))
    if quarantine_fraction > config.preprocess.max_quarantine_fraction:
        report = out_dir.parent / "preprocess-rejected.jsonl"
        report.parent.mkdir(parents=True, exist_ok=True)
        write_quarantine(report, quarantined)
        raise PreprocessError(
            f"{len(quarantined):,} of {input_count:,} inputs ({quarantine_fraction:.1%}) were quarantined, over the "
            f"limit preprocess.max_quarantine_fraction={config.preprocess.max_quarantine_fraction}. Reasons: {counts['by_reason']}. "
            f"See {report} for each record; fix the data or raise the limit."
        )
    split_warnings = check_splits(config, split_table(labels, member_label, split_of[member_doc]), own_splits)
    for warning in split_warnings:
        _log(f"warning: {warning}")

    vocab = Vocabulary.from_counts(token_counts, config.preprocess.vocab.min_count, config.preprocess.vocab.max_size)
    limits = _limits(config, split_stats["train"].sentences, split_stats["train"].words)
    label_ids = {label: i for i, label in enumerate(labels)}
    training_types = len(token_counts)
    del token_counts

    # Pass 4: encode and write the shards and the per-split document files.
    shard_size = config.preprocess.shard_documents
    writers = {name: ShardWriter(staging, name, shard_size, num_labels=len(labels) if config.data.multilabel else None)
               for name in SPLITS}
    documents = {name: open(staging / f"{name}.documents.jsonl", "w", encoding="utf-8") for name in SPLITS}
    try:
        tokenized = _spooled(tokens_spool)
        with Progress("encode and write shards", total=len(split_of)) as progress:
            for index, row in enumerate(_spooled(kept_spool)):
                progress.advance()
                if split_of[index] < 0:
                    continue
                name = SPLITS[split_of[index]]
                sentences, tokens = next(tokenized)
                encoded = split_stats[name].encode(vocab, tokens, limits["max_sentences"], limits["max_words"])
                members = label_members(row["label"])
                writers[name].add(encoded, [label_ids[label] for label in members] if config.data.multilabel
                                  else label_ids[row["label"]], row["id"])
                split_stats[name].labels.update(members)
                out = {"id": row["id"], "label": row["label"], "source": row["source"], "sentences": sentences}
                if row["meta"]:
                    out["meta"] = row["meta"]
                documents[name].write(json.dumps(out, ensure_ascii=False) + "\n")
        shards = {name: [p.name for p in writer.close()] for name, writer in writers.items()}
    finally:
        for handle in documents.values():
            handle.close()
    faults.point("preprocess:writing")

    stats: dict[str, Any] = {
        "documents": split_counts,
        "labels": labels,
        "multilabel": config.data.multilabel,  # class_balance then counts documents with each label
        "class_balance": {name: dict(sorted(split_stats[name].labels.items())) for name in SPLITS},
        "split_source": split_source,
        "warnings": split_warnings,
        "limits": limits,
        "vocabulary": {"size": len(vocab), "min_count": config.preprocess.vocab.min_count,
                       "max_size": config.preprocess.vocab.max_size, "training_types": training_types},
        "shards": {"documents_per_shard": shard_size, **shards},
        "decode_error_bytes": read_report.decode_error_bytes,
        "skipped_files": len(read_report.skipped_files),
        "files_read": read_report.files_read,
        "blank_lines": read_report.blank_lines,
        "documents_with_decode_errors": read_report.documents_with_decode_errors,
        "split_values": dict(sorted(read_report.split_values.items())),
        "dropped": dict(dropped),  # by preprocess.drop_header / drop_lines, before sentence splitting
        "quarantine": counts["by_reason"],
        "splits": {name: split_stats[name].summary() for name in SPLITS},
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
        "warnings": split_warnings,
        "config_hash": config.section_hash("name", "seed", "data", "preprocess"),
        "fingerprint": fingerprint,
        "inputs": inputs,
        "outputs": {},
    }
    return manifest, stats


def _track(config: PipelineConfig, out_dir: Path, manifest: dict[str, Any], cached: bool, started: float) -> None:
    """Log the stage to MLflow (a run from ``started``, the stage's ``time.perf_counter()`` start): counts
    and stats as metrics, stats and quarantine as artifacts, the splits as datasets."""
    import mlflow

    from pipeline.tracking import log_datasets, stage_run

    with stage_run(config, "preprocess", {"han.cached": str(cached).lower()}, started=started):
        counts = manifest["counts"]
        metrics = {f"counts.{k}": float(v) for k, v in counts.items() if isinstance(v, int)}
        metrics["warnings"] = float(len(manifest.get("warnings", [])))
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
            log_datasets(config, out_dir, SPLITS)
        mlflow.log_metrics(metrics)
        for name in (MANIFEST, "quarantine.jsonl", "labels.json"):
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name), "preprocess")
