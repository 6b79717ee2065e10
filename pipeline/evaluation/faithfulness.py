"""Is the attention an explanation? ERASER faithfulness of sentence weights (DeYoung et al., 2020).

Attention weights are not automatically explanations (Jain & Wallace 2019; Wiegreffe & Pinter
2019), so we measure whether the sentences a model weights highest are the ones its decision
depends on. With c the class predicted on the whole document:

- **comprehensiveness**@k = p_c(document) − p_c(document without its top-k sentences): high when
  removing the attended sentences takes the prediction away;
- **sufficiency**@k = p_c(document) − p_c(only its top-k sentences): near 0 (or negative) when
  the attended sentences alone carry the prediction.

Each is reported beside the same measure for k *random* sentences (averaged over several draws),
the baseline any explanation has to beat: a long document loses little from removing any one
sentence, so a comprehensiveness number means something only against that baseline. The
aggregates over all ks (``*_aopc``) are ERASER's area-over-the-perturbation-curve scores.

Documents with no more than k sentences are skipped for that k (removing all of them, or keeping
all of them, explains nothing), and counted. Documents are lists of sentences, each a 1-D array
of token ids exactly as the model saw them (tokenized, truncated), so a removed sentence is
removed from what the model reads, not from raw text that preprocessing might cut differently.

No TensorFlow here: the model is any ``predict_fn(documents) -> (n, classes)`` probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Document = list[np.ndarray]
PredictFn = Callable[[list[Document]], np.ndarray]

KINDS = ("attention", "random")
MEASURES = ("comprehensiveness", "sufficiency")


# --------------------------------------------------------------------------- perturbations
def remove_sentences(document: Document, indices: Sequence[int] | np.ndarray) -> Document:
    """The document without the sentences at ``indices``; the rest keep their order (the model reads in order)."""
    drop = {int(i) for i in indices}
    return [sentence for i, sentence in enumerate(document) if i not in drop]


def keep_sentences(document: Document, indices: Sequence[int] | np.ndarray) -> Document:
    """Only the sentences at ``indices``, in document order whatever order ``indices`` came in."""
    keep = {int(i) for i in indices}
    return [sentence for i, sentence in enumerate(document) if i in keep]


def top_k(weights: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest weights; ties go to the earlier sentence, so results are reproducible."""
    return np.argsort(-np.asarray(weights, dtype=np.float64), kind="stable")[:k]


# --------------------------------------------------------------------------- the measures
def _check_inputs(documents: list[Document], sentence_weights: list[np.ndarray], ks: Sequence[int]) -> None:
    """Fail loudly on inputs that would otherwise give quietly wrong numbers (weights of another document)."""
    if len(documents) != len(sentence_weights):
        raise ValueError(f"{len(documents)} documents but {len(sentence_weights)} sentence weight vectors")
    for i, (document, weights) in enumerate(zip(documents, sentence_weights, strict=True)):
        if len(document) != len(np.asarray(weights).reshape(-1)):
            raise ValueError(f"document {i} has {len(document)} sentences but {len(weights)} sentence weights")
    bad = [k for k in ks if int(k) != k or k < 1]
    if bad:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")


def _predict(predict_fn: PredictFn, documents: list[Document]) -> np.ndarray:
    """``predict_fn`` as a float array, checked to have one row per document."""
    probabilities = np.asarray(predict_fn(documents), dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != len(documents):
        raise ValueError(f"predict_fn returned shape {probabilities.shape} for {len(documents)} documents; "
                         "expected (documents, classes)")
    return probabilities


def _picks(kind: str, used: list[int], documents: list[Document], sentence_weights: list[np.ndarray], k: int,
           rng: np.random.Generator, random_draws: int) -> list[list[np.ndarray]]:
    """Per used document, the sentence index sets to perturb: attention's top k once, or ``random_draws`` draws.

    Random draws come from ``rng`` in a fixed order (documents in order, draws in order, ks in
    order), so a run with the same seed perturbs the same sentences.
    """
    if kind == "attention":
        return [[top_k(sentence_weights[i], k)] for i in used]
    return [[rng.choice(len(documents[i]), size=k, replace=False) for _ in range(random_draws)] for i in used]


def _drops(predict_fn: PredictFn, documents: list[Document], used: list[int], picks: list[list[np.ndarray]],
           base: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Mean comprehensiveness and sufficiency for one (k, kind), from ONE ``predict_fn`` call.

    The removed and the kept variants of every document go in the same call so that the caller's
    batching sees as many documents at once as possible.
    """
    draws = len(picks[0])
    removed = [remove_sentences(documents[i], pick) for i, doc_picks in zip(used, picks, strict=True) for pick in doc_picks]
    kept = [keep_sentences(documents[i], pick) for i, doc_picks in zip(used, picks, strict=True) for pick in doc_picks]
    probabilities = _predict(predict_fn, removed + kept)
    rows = np.arange(len(removed))
    target = np.repeat(classes, draws)
    after_removal = probabilities[rows, target].reshape(len(used), draws).mean(axis=1)
    after_keeping = probabilities[rows + len(removed), target].reshape(len(used), draws).mean(axis=1)
    return {"comprehensiveness": float(np.mean(base - after_removal)),
            "sufficiency": float(np.mean(base - after_keeping))}


def _ratio(attention: float | None, random: float | None) -> float | None:
    """How many times more the attended sentences matter than random ones; None where undefined."""
    if attention is None or random is None or abs(random) < 1e-12:
        return None
    return attention / random


def faithfulness(predict_fn: PredictFn, documents: list[Document], sentence_weights: list[np.ndarray], *,
                 ks: Sequence[int] = (1, 2, 3), random_draws: int = 5, seed: int = 0) -> dict[str, Any]:
    """Comprehensiveness and sufficiency per k, for attention's top-k and for k random sentences.

    ``predict_fn`` is called once on the full documents and then once per (k, kind) on all the
    perturbed documents of that k and kind together (removed and kept variants). Values are
    means over the documents with more than k sentences (``documents[k]``; ``skipped[k]`` the
    rest); None for a k where no document qualifies. Keys for k are strings so that the result
    is the same after a JSON round trip.
    """
    if random_draws < 1:
        raise ValueError(f"random_draws must be at least 1, got {random_draws}")
    _check_inputs(documents, sentence_weights, ks)
    ks = [int(k) for k in ks]
    result: dict[str, Any] = {
        "ks": ks,
        **{kind: {measure: {} for measure in MEASURES} for kind in KINDS},
        "documents": {},
        "skipped": {},
        "ratio": {},
        "random_draws": int(random_draws),
        "seed": int(seed),
    }
    full = _predict(predict_fn, documents) if documents else np.zeros((0, 1))
    predicted = full.argmax(axis=1)
    rng = np.random.default_rng(seed)
    for k in ks:
        key = str(k)
        used = [i for i, document in enumerate(documents) if len(document) > k]
        result["documents"][key] = len(used)
        result["skipped"][key] = len(documents) - len(used)
        for kind in KINDS:
            values: dict[str, float | None] = dict.fromkeys(MEASURES)
            if used:
                picks = _picks(kind, used, documents, sentence_weights, k, rng, random_draws)
                values.update(_drops(predict_fn, documents, used, picks, full[used, predicted[used]], predicted[used]))
            for measure in MEASURES:
                result[kind][measure][key] = values[measure]
        result["ratio"][key] = _ratio(result["attention"]["comprehensiveness"][key],
                                      result["random"]["comprehensiveness"][key])
    for kind in KINDS:
        for measure in MEASURES:
            values_k = [v for v in result[kind][measure].values() if v is not None]
            result[kind][f"{measure}_aopc"] = float(np.mean(values_k)) if values_k else None
    return result


def weight_share(sentence_weights: list[np.ndarray], ks: Sequence[int] = (1, 2)) -> dict[str, float | None]:
    """Mean share of a document's sentence weight on its top-k sentences, over the documents with more than k
    sentences (a shorter one holds all of it trivially); None for a k no document reaches. How concentrated
    the attention is: what a reader sees, where comprehensiveness says whether it matters."""
    shares: dict[str, float | None] = {}
    for k in ks:
        values = [float(np.sort(w)[::-1][:k].sum()) for w in (np.asarray(w, dtype=np.float64).reshape(-1)
                                                               for w in sentence_weights) if len(w) > k]
        shares[str(k)] = float(np.mean(values)) if values else None
    return shares


def evidence_hit_rate(sentence_weights: list[np.ndarray], evidence: list[list[int]]) -> dict[str, Any]:
    """Share of documents whose top-weighted sentence is one of their known evidence sentences.

    Used where the evidence is known (the demo corpus plants it). Documents with no evidence are
    skipped, and so are evidence positions past the sentences the model read (truncation), since
    attention cannot be blamed for missing a sentence it never saw. ``hit_rate`` is None when no
    document qualifies.
    """
    hits = used = 0
    for weights, positions in zip(sentence_weights, evidence, strict=True):
        weights = np.asarray(weights).reshape(-1)
        seen = {int(p) for p in positions if 0 <= int(p) < len(weights)}
        if not seen:
            continue
        used += 1
        hits += int(top_k(weights, 1)[0]) in seen
    return {"hit_rate": hits / used if used else None, "documents": used}


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Scalars for ``mlflow.log_metrics``: ``faithfulness.<measure>.<kind>.k<k>``, ``faithfulness.<measure>_aopc.<kind>``,
    ``faithfulness.comprehensiveness_ratio.k<k>`` and ``faithfulness.weight_share.top<k>``; undefined (None) values are
    left out."""
    flat: dict[str, float] = {}
    for kind in KINDS:
        for measure in MEASURES:
            for key, value in result[kind][measure].items():
                if value is not None:
                    flat[f"faithfulness.{measure}.{kind}.k{key}"] = float(value)
            aopc = result[kind].get(f"{measure}_aopc")
            if aopc is not None:
                flat[f"faithfulness.{measure}_aopc.{kind}"] = float(aopc)
    for key, value in result["ratio"].items():
        if value is not None:
            flat[f"faithfulness.comprehensiveness_ratio.k{key}"] = float(value)
    for key, value in (result.get("weight_share") or {}).items():
        if value is not None:
            flat[f"faithfulness.weight_share.top{key}"] = float(value)
    return flat


# --------------------------------------------------------------------------- the figure
def plot_faithfulness(result: dict[str, Any], path: str | Path) -> None:
    """Comprehensiveness (higher is better) and sufficiency (lower is better) per k, attention beside random."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = result["ks"]
    positions = np.arange(len(ks))
    width = 0.38
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch, nothing left open
    axes = fig.subplots(1, 2)
    for ax, measure, better in zip(axes, MEASURES, ("higher", "lower"), strict=True):
        for offset, kind, colour, name in ((-width / 2, "attention", "tab:red", "top-k attention sentences"),
                                           (width / 2, "random", "tab:gray", "k random sentences")):
            values = [result[kind][measure][str(k)] for k in ks]
            shown = [(x, v) for x, v in zip(positions + offset, values, strict=True) if v is not None]
            bars = ax.bar([x for x, _ in shown], [v for _, v in shown], width, label=name, color=colour)
            ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(positions, [f"k={k}\n({result['documents'][str(k)]} docs)" for k in ks])
        ax.set_ylabel("drop in p(predicted class)")
        ax.set_title(f"{measure} ({better} is better)")
        ax.legend(fontsize=8)
    fig.suptitle("Faithfulness of sentence attention (ERASER)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
