"""The explain stage: what the model attended to, for every test document (or given texts), and
whether that attention is faithful to the model's decisions.

Output: ``artifacts/<name>/explain/`` (or ``explain-input/`` for ``--file``/``--text``):

- ``explanations.jsonl``: one record per document (sentences, sentence weights, words with
  weights, predicted label, probabilities, true label when known), see ``pipeline.evaluation.report``;
- ``report.html``: one self-contained page with sentence and word heatmaps (the HAN paper's
  figure), filters for class, correct/incorrect and confidence, and the plots: the evaluate stage's
  (when it evaluated this model) and the faithfulness one;
- ``class_summary.json``: per class, the words and sentences that get the most attention;
- ``faithfulness.json`` / ``faithfulness.png`` (test split only): ERASER comprehensiveness and
  sufficiency of the top-k attention sentences against k random ones, and, on the demo corpus,
  the evidence hit rate.

Removal for faithfulness happens on the encoded (tokenized, truncated) document, exactly as the
model saw it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import MANIFEST, atomic_directory, output_hashes, read_json, read_manifest, write_json
from pipeline.config import PipelineConfig
from pipeline.tracking import check_before_commit

STAGE_VERSION = 1


class ExplainError(RuntimeError):
    """The stage cannot run; the message says what to do."""


@dataclass(frozen=True)
class ExplainResult:
    output_dir: Path
    summary: dict[str, Any]


def _log(message: str) -> None:
    print(f"explain: {message}", file=sys.stderr, flush=True)


def probabilities_fn(infer, batch_size: int):
    """``documents -> probabilities`` for the faithfulness measures."""

    from pipeline.model.han import document_outputs

    def predict(documents: list[list[np.ndarray]]) -> np.ndarray:
        return np.stack([out["probabilities"] for out in document_outputs(infer, documents, batch_size)])

    return predict


def sampled_faithfulness(config: PipelineConfig, infer, documents: list, sentence_weights: list[np.ndarray]) -> dict[str, Any]:
    """Comprehensiveness and sufficiency on ``explain.faithfulness_documents`` of ``documents``, drawn with the
    config's seed: what the explain stage reports, and what the benchmark measures for each seed."""
    from pipeline.evaluation.faithfulness import faithfulness, weight_share

    settings = config.explain
    rng = np.random.default_rng(config.seed)
    subset = np.sort(rng.permutation(len(documents))[: settings.faithfulness_documents])
    faith = faithfulness(probabilities_fn(infer, settings.batch_size), [documents[i] for i in subset],
                         [sentence_weights[i] for i in subset], ks=tuple(settings.ks),
                         random_draws=settings.random_draws, seed=config.seed)
    faith["documents_sampled"] = len(subset)
    faith["weight_share"] = weight_share([sentence_weights[i] for i in subset])
    return faith


def record(doc_id: str, label: str | list[str] | None, labels: list[str], sentences: list[str], words: list[list[str]],
           outputs: dict[str, Any], truncated: bool, thresholds: list[float] | None = None) -> dict[str, Any]:
    """One explanation record (the schema in ``pipeline.evaluation.report``).

    ``sentences`` are the sentences as written (what the report shows), ``words`` their tokens as
    the model read them (what the weights are of). ``thresholds``: a multi-label model's; ``predicted``
    (and ``label``) are then label lists, and ``confidence`` the probability of the most probable label.
    """
    probabilities = np.asarray(outputs["probabilities"])
    if thresholds is None:
        predicted: str | list[str] = labels[int(np.argmax(probabilities))]
    else:
        from pipeline.evaluation.metrics import multilabel_decisions

        chosen = multilabel_decisions(probabilities[None, :], thresholds)[0]
        predicted = [name for name, on in zip(labels, chosen, strict=True) if on]
        label = None if label is None else sorted([label] if isinstance(label, str) else label)
    return {
        "id": doc_id,
        "label": label,
        "predicted": predicted,
        "probabilities": {name: round(float(p), 6) for name, p in zip(labels, probabilities, strict=True)},
        "confidence": round(float(np.max(probabilities)), 6),
        "correct": None if label is None else label == predicted,
        "sentences": [
            {"text": text, "weight": round(float(weight), 6),
             "words": [[token, round(float(w), 6)] for token, w in zip(tokens, word_weights, strict=True)]}
            for text, tokens, weight, word_weights in zip(
                sentences, words, outputs["sentence_weights"], outputs["word_weights"], strict=True)
        ],
        "truncated": truncated,
    }


def add_label_evidence(explanations: list[dict[str, Any]], documents: list[list[np.ndarray]], labels: list[str],
                       predict) -> None:
    """Multi-label: for each predicted label of each document, the sentence whose removal lowers that label's
    probability most (``label_evidence``: ``{label: {"sentence": i, "drop": p - p_without}}``), since one
    attention distribution serves every label. ``predict``: documents -> probabilities (``probabilities_fn``).
    One-sentence documents get none (removing the only sentence leaves nothing to read)."""
    from pipeline.evaluation.faithfulness import remove_sentences

    variants = []
    for document in documents:
        if len(document) > 1:
            variants += [remove_sentences(document, [i]) for i in range(len(document))]
    without = predict(variants) if variants else np.zeros((0, len(labels)))
    start = 0
    for explanation, document in zip(explanations, documents, strict=True):
        if len(document) <= 1:
            explanation["label_evidence"] = {}
            continue
        rows = without[start:start + len(document)]
        start += len(document)
        evidence = {}
        for label in explanation["predicted"]:
            column = labels.index(label)
            drops = explanation["probabilities"][label] - rows[:, column]
            best = int(np.argmax(drops))
            evidence[label] = {"sentence": best, "drop": round(float(drops[best]), 6)}
        explanation["label_evidence"] = evidence
    assert start == len(variants)


def _report_selection(explanations: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Misclassified documents first (least confident first), then the rest round-robin over classes."""
    if len(explanations) <= limit:
        return explanations
    wrong = sorted((e for e in explanations if e["correct"] is False), key=lambda e: e["confidence"])
    by_class: dict[str, list[dict[str, Any]]] = {}
    for e in explanations:
        if e["correct"] is not False:
            predicted = e["predicted"]
            by_class.setdefault(predicted if isinstance(predicted, str) else tuple(predicted), []).append(e)
    chosen = wrong[:limit]
    queues = list(by_class.values())
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def evaluate_figures(config: PipelineConfig) -> tuple[list[tuple[str, Path]], list[str]]:
    """The evaluate stage's plots for the report, and a note when they are left out for being another model's.

    They are only shown when the evaluate stage scored the model that is explained now (its
    manifest's ``train_fingerprint``); absent files are left out by the report itself.
    """
    evaluate_dir = config.stage_dir("evaluate")
    evaluated = read_manifest(evaluate_dir)
    if evaluated is None:
        return [], []
    trained = read_manifest(config.stage_dir("train")) or {}
    if evaluated.get("train_fingerprint") != trained.get("fingerprint"):
        return [], [f"the evaluate stage's plots are left out: they are of an earlier model; run `{config.command('evaluate')}`"]
    metrics_path = evaluate_dir / "metrics.json"
    baseline = (read_json(metrics_path).get("baseline") or {}) if metrics_path.is_file() else {}
    read = {"full_text": "their full text", "tokens": "the HAN's tokens"}.get(baseline.get("input"), "the same tokens")
    if config.data.multilabel:
        return [(f"Each label's F1 on the test split (evaluate stage), the HAN beside the one-vs-rest TF-IDF + "
                 f"logistic regression baseline reading {read}.", evaluate_dir / "label_f1.png")], []
    return [("The HAN on the test split (evaluate stage): rows are the true class, columns the predicted one; "
             "colour is the share of the true class.", evaluate_dir / "confusion_matrix.png"),
            (f"The TF-IDF + logistic regression baseline on the same documents, reading {read}.",
             evaluate_dir / "baseline_confusion_matrix.png")], []


def read_texts(text: str | None, file: str | None) -> tuple[list[str], list[str | None] | None]:
    """``--text`` or ``--file`` (``.jsonl``: one ``{"text", "label"?}`` per line; else one document)."""
    from pipeline.serving.predict import read_inputs

    if file is None or not file.endswith(".jsonl"):
        return read_inputs(text, file), None
    texts, labels = [], []
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}:{number}: not valid JSON ({err.msg}); each line must be an object "
                                 'like {"text": "...", "label": "..."}') from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f'{file}:{number}: needs a "text" field holding a string')
            texts.append(row["text"])
            labels.append(row.get("label"))
    if not texts:
        raise ValueError(f"{file}: no documents in it")
    return texts, labels if any(label is not None for label in labels) else None


# --------------------------------------------------------------------------- the stage
def run(config: PipelineConfig, texts: list[str] | None = None, labels_given: list[str | None] | None = None) -> ExplainResult:
    """Explain the test split (default) or the given raw texts."""
    from pipeline.runtime import apply_runtime

    apply_runtime(config.resolved().runtime)
    train_dir = config.stage_dir("train")
    if read_manifest(train_dir) is None or not (train_dir / "bundle").is_dir():
        raise ExplainError(f"no trained model in {train_dir}; run `{config.command('train')}` "
                           f"(or `{config.command('pipeline')}`) first")
    if texts is not None:
        return _explain_texts(config, texts, labels_given)
    return _explain_test_split(config)


def _explain_texts(config: PipelineConfig, texts: list[str], labels_given: list[str | None] | None) -> ExplainResult:
    from pipeline.evaluation.report import class_summary, write_report
    from pipeline.serving.bundle import RawTextClassifier

    classifier = RawTextClassifier.from_directory(config.stage_dir("train") / "bundle")
    labels = list(classifier.labels)
    thresholds = None if classifier.thresholds is None else classifier.thresholds.tolist()
    answers = classifier.predict(texts, batch_size=config.explain.batch_size)
    explanations, errors, encoded = [], [], []
    for i, answer in enumerate(answers):
        if answer.get("error"):
            errors.append({"index": i, "error": answer["error"]})
            continue
        truth = labels_given[i] if labels_given else None
        outputs = {"probabilities": np.asarray([answer["probabilities"][name] for name in labels]),
                   "sentence_weights": answer["sentence_weights"], "word_weights": answer["word_weights"]}
        explanations.append(record(f"input-{i + 1}", truth, labels, answer["sentences"], answer["words"], outputs,
                                   bool(answer.get("truncated")), thresholds))
        encoded.append(i)
    if not explanations:
        raise ExplainError("none of the given texts could be explained: " + "; ".join(e["error"] for e in errors))
    if thresholds is not None:
        documents = classifier.encode([texts[i] for i in encoded])
        add_label_evidence(explanations, documents, labels, probabilities_fn(classifier.infer, config.explain.batch_size))
    summary = {"documents": len(explanations), "errors": errors, "labels": labels}
    figures, figure_notes = evaluate_figures(config)
    out_dir = config.stage_dir("explain-input")
    with atomic_directory(out_dir) as staging:
        _write_jsonl(staging / "explanations.jsonl", explanations)
        summary["class_summary"] = class_summary(explanations, labels, config.explain.top_n)
        write_report(staging / "report.html", explanations, labels, title=f"{config.name}: attention for the given texts",
                     summary=summary["class_summary"], notes=[f"{len(explanations)} documents", *figure_notes],
                     figures=figures)
        write_json(staging / "summary.json", summary)
    _log(f"wrote {out_dir / 'report.html'} ({len(explanations)} documents)")
    return ExplainResult(out_dir, summary)


def _explain_test_split(config: PipelineConfig) -> ExplainResult:
    from pipeline.data.shards import load_split
    from pipeline.evaluation.faithfulness import evidence_hit_rate
    from pipeline.model.han import document_outputs
    from pipeline.serving.bundle import RawTextClassifier

    started = time.perf_counter()
    prep_dir = config.stage_dir("preprocess")
    settings = config.explain
    # The model artifact predict and serve load: its labels, text processor, limits and thresholds.
    bundle = RawTextClassifier.from_directory(config.stage_dir("train") / "bundle")
    labels, processor, max_words = bundle.labels, bundle.processor, bundle.max_words
    test = load_split(prep_dir, "test")
    if len(test) == 0:
        raise ExplainError("the test split is empty; set preprocess.split.test above 0 and preprocess again")
    rows = [json.loads(line) for line in (prep_dir / "test.documents.jsonl").read_text(encoding="utf-8").splitlines()]
    documents = test.documents()
    infer = bundle.infer

    outputs = document_outputs(infer, documents, settings.batch_size)
    thresholds = None if bundle.thresholds is None else bundle.thresholds.tolist()
    explanations = []
    for i, (row, doc, out) in enumerate(zip(rows, documents, outputs, strict=True)):
        sentences = row["sentences"][: len(doc)]
        tokens = [processor.tokenizer.tokenize(s) for s in sentences]  # once per sentence
        words = [sentence[:max_words] for sentence in tokens]
        if [len(w) for w in words] != [len(s) for s in doc]:
            raise ExplainError(f"test document {row['id']} re-tokenizes differently from preprocessing; "
                               f"preprocess again (`{config.command('preprocess', '--force')}`)")
        truncated = len(row["sentences"]) > len(doc) or any(len(sentence) > max_words for sentence in tokens)
        explanations.append(record(str(test.ids[i]), row["label"], labels, sentences, words, out, truncated, thresholds))
    if thresholds is not None:  # per predicted label, the sentence it rests on most: for the documents in the report
        shown = {id(e) for e in _report_selection(explanations, settings.report_documents)}
        chosen = [i for i, e in enumerate(explanations) if id(e) in shown]
        add_label_evidence([explanations[i] for i in chosen], [documents[i] for i in chosen], labels,
                           probabilities_fn(infer, settings.batch_size))
    _log(f"explained {len(explanations):,} test documents in {time.perf_counter() - started:.1f}s")

    measured = time.perf_counter()
    faith = sampled_faithfulness(config, infer, documents, [out["sentence_weights"] for out in outputs])
    evidence = [row.get("meta", {}).get("evidence") for row in rows]
    if any(e for e in evidence):
        hits = evidence_hit_rate([out["sentence_weights"] for out in outputs], [e or [] for e in evidence])
        faith["evidence"] = hits
        _log(f"evidence hit rate: the top sentence is a planted evidence sentence in {hits['hit_rate']:.1%} "
             f"of {hits['documents']} documents")
    _log(_faithfulness_line(faith) + f" ({time.perf_counter() - measured:.1f}s)")
    _log(_faithfulness_line(faith, "sufficiency") + " (lower = the k sentences alone keep the prediction)")
    _log(_share_line(faith))
    return _write(config, explanations, labels, faith, started)


def _share_line(faith: dict[str, Any]) -> str:
    """How concentrated attention is: the top sentence's and the top two's mean share of a document's weight."""
    share = faith.get("weight_share") or {}
    parts = [f"the top {'sentence' if k == '1' else k + ' sentences'} {value:.0%}" for k, value in share.items()
             if value is not None]
    return ("attention: " + ", ".join(parts) + " of a document's sentence weight on average") if parts else \
        "attention: no document has more than one sentence"


def _faithfulness_line(faith: dict[str, Any], measure: str = "comprehensiveness") -> str:
    """One measure per k, attention's top-k sentences against k random ones (``pipeline.evaluation.faithfulness``)."""
    parts = []
    for k in faith["ks"]:
        key = str(k)
        mine, chance = faith["attention"][measure][key], faith["random"][measure][key]
        if mine is None or chance is None:
            parts.append(f"k={k}: no document has more than {k} sentences")
            continue
        parts.append(f"k={k}: {mine:.3f} vs random {chance:.3f}")
    return f"{measure} (attention vs random) " + ", ".join(parts)


def _write(config: PipelineConfig, explanations, labels, faith, started) -> ExplainResult:
    import mlflow

    from pipeline.evaluation.faithfulness import flat_metrics, plot_faithfulness
    from pipeline.evaluation.report import class_summary, write_report
    from pipeline.tracking import stage_run

    summary_by_class = class_summary(explanations, labels, config.explain.top_n)
    accuracy = float(np.mean([e["correct"] for e in explanations]))
    multilabel = any(isinstance(e["predicted"], list) for e in explanations)
    notes = [f"{len(explanations):,} test documents, " + (f"exact label set {accuracy:.4f}; faithfulness is of the most "
             "probable label, and each predicted label names the sentence whose removal lowers it most"
             if multilabel else f"accuracy {accuracy:.4f}"),
             _faithfulness_line(faith) + " (ERASER; higher = attention picks sentences the decision depends on)",
             _faithfulness_line(faith, "sufficiency") + " (ERASER; lower = the attended sentences alone keep the "
             "prediction)", _share_line(faith)]
    if "evidence" in faith:
        notes.append(f"evidence hit rate {faith['evidence']['hit_rate']:.1%} (demo corpus: top sentence is a planted one)")
    selection = _report_selection(explanations, config.explain.report_documents)
    if len(selection) < len(explanations):
        notes.append(f"the report shows {len(selection):,} of {len(explanations):,} documents (misclassified first); "
                     "explanations.jsonl holds all")
    figures, figure_notes = evaluate_figures(config)
    out_dir = config.stage_dir("explain")
    with atomic_directory(out_dir) as staging:
        _write_jsonl(staging / "explanations.jsonl", explanations)
        plot_faithfulness(faith, staging / "faithfulness.png")
        figures.append(("Comprehensiveness: the drop in the predicted class's probability when the k sentences "
                        "with the most attention are removed; sufficiency: the drop when only they are kept. "
                        "Grey: k random sentences.", staging / "faithfulness.png"))
        write_report(staging / "report.html", selection, labels, title=f"{config.name}: what the HAN attended to",
                     summary=summary_by_class, notes=notes + figure_notes, figures=figures)
        write_json(staging / "class_summary.json", summary_by_class)
        write_json(staging / "faithfulness.json", faith)
        write_json(staging / MANIFEST, {"stage": "explain", "stage_version": STAGE_VERSION,
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "documents": len(explanations), "outputs": output_hashes(staging)})
        check_before_commit()  # a locked or full tracking store: refused now, not after the commit
    with stage_run(config, "explain", started=started):
        metrics = flat_metrics(faith)
        if "evidence" in faith:
            metrics["faithfulness.evidence_hit_rate"] = float(faith["evidence"]["hit_rate"])
        mlflow.log_metrics(metrics)
        for path in sorted(out_dir.iterdir()):
            if path.is_file():
                mlflow.log_artifact(str(path), "explain")
    shown = "" if len(selection) == len(explanations) else \
        f" ({len(selection):,} of the {len(explanations):,} documents, misclassified first; explanations.jsonl holds all)"
    _log(f"wrote {out_dir / 'report.html'}{shown} in {time.perf_counter() - started:.1f}s")
    return ExplainResult(out_dir, {"documents": len(explanations), "faithfulness": faith, "notes": notes})


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
