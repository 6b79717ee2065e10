"""Faithfulness numbers on a model whose answer is known exactly: a plain numpy function of the tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.evaluation.faithfulness import (
    evidence_hit_rate,
    faithfulness,
    flat_metrics,
    keep_sentences,
    plot_faithfulness,
    remove_sentences,
    weight_share,
)

KEY = 7


def keyword_model(documents):
    """Class 1 with probability 0.9 when some sentence holds token 7, else 0.2."""
    p1 = np.asarray([0.9 if any(KEY in s for s in doc) else 0.2 for doc in documents], dtype=np.float64)
    return np.stack([1 - p1, p1], axis=1).reshape(len(documents), 2)


def doc(*sentences):
    return [np.asarray(s, dtype=np.int32) for s in sentences]


DOCS = [doc([3, 4], [5, KEY], [6], [8, 9]), doc([KEY, 2], [3], [4, 4], [5])]
KEY_AT = [1, 0]
RIGHT = [np.array([0.1, 0.6, 0.2, 0.1]), np.array([0.7, 0.1, 0.1, 0.1])]  # the keyword sentence on top
WRONG = [np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.1, 0.7, 0.1, 0.1])]


def test_remove_and_keep_preserve_document_order():
    d = doc([1], [2], [3], [4])
    assert [s.tolist() for s in remove_sentences(d, [2, 0])] == [[2], [4]]
    assert [s.tolist() for s in keep_sentences(d, np.array([3, 1]))] == [[2], [4]]
    assert [s.tolist() for s in remove_sentences(d, [])] == [[1], [2], [3], [4]]
    assert keep_sentences(d, [1])[0] is d[1]  # sentences are shared, not copied


def test_attention_on_the_deciding_sentence_is_fully_comprehensive_and_sufficient():
    result = faithfulness(keyword_model, DOCS, RIGHT, ks=(1,), random_draws=3, seed=0)
    assert result["attention"]["comprehensiveness"]["1"] == pytest.approx(0.7, abs=1e-12)  # 0.9 -> 0.2
    assert result["attention"]["sufficiency"]["1"] == 0.0  # the sentence alone keeps 0.9


def test_attention_on_the_wrong_sentence_explains_nothing():
    result = faithfulness(keyword_model, DOCS, WRONG, ks=(1,), random_draws=2)
    assert result["attention"]["comprehensiveness"]["1"] == 0.0
    assert result["attention"]["sufficiency"]["1"] == pytest.approx(0.7, abs=1e-12)  # kept sentence lacks it


def test_tied_weights_go_to_the_earlier_sentence():
    uniform = [np.full(4, 0.25), np.full(4, 0.25)]
    result = faithfulness(keyword_model, DOCS, uniform, ks=(1,), random_draws=1)
    # top-1 is sentence 0: the keyword sentence of the second document only
    assert result["attention"]["comprehensiveness"]["1"] == pytest.approx(0.35, abs=1e-12)


def test_random_baseline_is_the_exact_mean_over_the_drawn_sentences():
    """Replays the generator: per k, per document, per draw, ``choice(n, k, replace=False)``."""
    draws = 4
    result = faithfulness(keyword_model, DOCS, RIGHT, ks=(1, 2), random_draws=draws, seed=11)
    rng = np.random.default_rng(11)
    for k in (1, 2):
        comprehensiveness, sufficiency = [], []
        for d, key in zip(DOCS, KEY_AT, strict=True):
            picks = [rng.choice(len(d), size=k, replace=False) for _ in range(draws)]
            comprehensiveness.append(np.mean([0.7 if key in p else 0.0 for p in picks]))
            sufficiency.append(np.mean([0.0 if key in p else 0.7 for p in picks]))
        assert result["random"]["comprehensiveness"][str(k)] == pytest.approx(np.mean(comprehensiveness), abs=1e-12)
        assert result["random"]["sufficiency"][str(k)] == pytest.approx(np.mean(sufficiency), abs=1e-12)


def test_random_baseline_converges_to_its_expectation():
    """One keyword sentence in four: a random sentence is it with probability 1/4."""
    result = faithfulness(keyword_model, DOCS[:1], RIGHT[:1], ks=(1,), random_draws=4000, seed=5)
    assert result["random"]["comprehensiveness"]["1"] == pytest.approx(0.7 / 4, abs=0.03)
    assert result["random"]["sufficiency"]["1"] == pytest.approx(0.7 * 3 / 4, abs=0.03)
    assert result["ratio"]["1"] == pytest.approx(4, rel=0.2)


def test_short_documents_are_skipped_and_counted_and_the_result_is_json():
    docs = [*DOCS, doc([KEY], [1]), doc([KEY])]
    weights = [*RIGHT, np.array([0.5, 0.5]), np.array([1.0])]
    result = faithfulness(keyword_model, docs, weights, ks=(1, 2, 3, 4), random_draws=2)
    assert result["documents"] == {"1": 3, "2": 2, "3": 2, "4": 0}
    assert result["skipped"] == {"1": 1, "2": 2, "3": 2, "4": 4}
    assert result["attention"]["comprehensiveness"]["4"] is None and result["ratio"]["4"] is None
    assert result["attention"]["comprehensiveness_aopc"] == pytest.approx(
        np.mean([result["attention"]["comprehensiveness"][k] for k in "123"]))
    assert json.loads(json.dumps(result)) == result  # string keys for k


def test_perturbed_documents_are_batched_per_k_and_kind():
    calls = []

    def recording_model(documents):
        calls.append([len(d) for d in documents])
        return keyword_model(documents)

    faithfulness(recording_model, DOCS, RIGHT, ks=(1, 2, 3), random_draws=5)
    # the full documents once, then per k: attention (2 documents), random (2 x 5 draws); removed ones, then kept ones
    assert [len(c) for c in calls] == [2] + [2 * 2, 2 * 5 * 2] * 3
    for k, attention, random in zip((1, 2, 3), calls[1::2], calls[2::2], strict=True):
        for sizes in (attention, random):  # k distinct sentences go (4 - k left), or stay (k left)
            assert sizes == [4 - k] * (len(sizes) // 2) + [k] * (len(sizes) // 2)


def test_ratio_is_none_when_random_removal_changes_nothing():
    everywhere = [doc([KEY], [KEY, 1], [KEY])]
    result = faithfulness(keyword_model, everywhere, [np.array([0.2, 0.5, 0.3])], ks=(1,), random_draws=3)
    assert result["random"]["comprehensiveness"]["1"] == 0.0 and result["ratio"]["1"] is None
    assert "faithfulness.comprehensiveness_ratio.k1" not in flat_metrics(result)


def test_flat_metric_names_and_values():
    result = faithfulness(keyword_model, DOCS, RIGHT, ks=(1, 2), random_draws=5, seed=3)
    flat = flat_metrics(result)
    expected = {f"faithfulness.{m}.{kind}.k{k}" for m in ("comprehensiveness", "sufficiency")
                for kind in ("attention", "random") for k in (1, 2)}
    expected |= {f"faithfulness.{m}_aopc.{kind}" for m in ("comprehensiveness", "sufficiency")
                 for kind in ("attention", "random")}
    expected |= {"faithfulness.comprehensiveness_ratio.k1", "faithfulness.comprehensiveness_ratio.k2"}
    assert set(flat) == expected
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["faithfulness.comprehensiveness.attention.k1"] == pytest.approx(0.7)
    ratio = 0.7 / result["random"]["comprehensiveness"]["1"]
    assert flat["faithfulness.comprehensiveness_ratio.k1"] == pytest.approx(ratio)


def test_mismatched_weights_are_refused():
    with pytest.raises(ValueError, match="document 1 has 4 sentences but 3"):
        faithfulness(keyword_model, DOCS, [RIGHT[0], np.array([0.5, 0.3, 0.2])])
    with pytest.raises(ValueError, match="2 documents but 1"):
        faithfulness(keyword_model, DOCS, RIGHT[:1])
    with pytest.raises(ValueError, match="positive integers"):
        faithfulness(keyword_model, DOCS, RIGHT, ks=(0,))


def test_evidence_hit_rate():
    weights = [np.array([0.1, 0.9]), np.array([0.8, 0.2]), np.array([0.5, 0.5]), np.array([0.3, 0.7]),
               np.array([0.4, 0.4, 0.2])]
    evidence = [[1], [1], [], [5], [0, 2]]  # no evidence: skipped; evidence past the read sentences: skipped
    assert evidence_hit_rate(weights, evidence) == {"hit_rate": 2 / 3, "documents": 3}  # tie -> sentence 0
    assert evidence_hit_rate(weights[:1], [[]]) == {"hit_rate": None, "documents": 0}


def test_plot_is_a_png(tmp_path):
    result = faithfulness(keyword_model, [*DOCS, doc([1], [2])], [*RIGHT, np.array([0.5, 0.5])], ks=(1, 2, 5),
                          random_draws=2)  # k=5: no document qualifies, nothing to draw
    plot_faithfulness(result, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weight_share_is_the_mean_top_k_share_over_documents_longer_than_k():
    weights = [np.array([0.1, 0.6, 0.3]), np.array([0.5, 0.5]), np.array([1.0])]
    share = weight_share(weights, ks=(1, 2, 3))
    assert share["1"] == pytest.approx((0.6 + 0.5) / 2)  # the one-sentence document holds all of it trivially: left out
    assert share["2"] == pytest.approx(0.9) and share["3"] is None  # only the first has more than 2; none more than 3
    flat = flat_metrics({**faithfulness(lambda docs: np.full((len(docs), 2), 0.5), [[np.array([2])]] * 2,
                                        [np.array([1.0])] * 2, ks=(1,)), "weight_share": share})
    assert flat["faithfulness.weight_share.top1"] == share["1"] and "faithfulness.weight_share.top3" not in flat
