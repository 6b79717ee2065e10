"""Packed inference (``pipeline.model.packing``): the sentences of many documents sorted by length across
documents, the two levels of the model run apart, the same outputs as the whole model."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from test_model import NUM_CLASSES, OPTIONS, VOCAB_SIZE, pad, small_config  # the same small HANs

from pipeline.model.han import build_han, document_outputs, inference_function
from pipeline.model.packing import PACK_MIN_SENTENCES, PackedInference

# Lengths that differ across documents, an empty sentence in the middle, one-sentence and long documents.
RNG = np.random.default_rng(3)
DOCUMENTS = [[RNG.integers(2, VOCAB_SIZE, RNG.integers(1, 12)).astype(np.int32) for _ in range(RNG.integers(1, 9))]
             for _ in range(23)]
DOCUMENTS[4][1] = np.zeros(0, dtype=np.int32)


def _whole_model_outputs(model, documents):
    """Each document on its own through the whole model: no packing, no neighbours."""
    results = []
    for document in documents:
        out = {name: np.asarray(value, dtype=np.float64) for name, value in model(pad([document]), training=False).items()}
        results.append({"probabilities": out["probabilities"][0], "sentence_weights": out["sentence_weights"][0, : len(document)],
                        "word_weights": [out["word_weights"][0, j, : len(s)] for j, s in enumerate(document)]})
    return results


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_packed_outputs_equal_the_whole_models_for_every_option(option):
    keras.utils.set_random_seed(0)
    model = build_han(small_config(**OPTIONS[option]), VOCAB_SIZE, NUM_CLASSES)
    expected = _whole_model_outputs(model, DOCUMENTS)
    # Chunks of 5 sentences and batches of 4 documents: many chunks and batches, each with other neighbours.
    packed = document_outputs(inference_function(model, sentence_batch=5, document_batch=4, min_sentences=0), DOCUMENTS, batch_size=4)
    for got, want in zip(packed, expected, strict=True):
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
        np.testing.assert_allclose(got["sentence_weights"], want["sentence_weights"], atol=1e-5)
        assert len(got["word_weights"]) == len(want["word_weights"])
        for mine, theirs in zip(got["word_weights"], want["word_weights"], strict=True):
            np.testing.assert_allclose(mine, theirs, atol=1e-5)
    assert packed[4]["sentence_weights"][1] == 0.0 and len(packed[4]["word_weights"][1]) == 0  # the empty sentence


def test_packing_does_not_depend_on_the_chunk_size_and_matches_the_padded_path():
    keras.utils.set_random_seed(0)
    model = build_han(small_config(), VOCAB_SIZE, NUM_CLASSES)
    small = document_outputs(inference_function(model, sentence_batch=1, document_batch=1, min_sentences=0), DOCUMENTS, batch_size=1)
    large = document_outputs(inference_function(model, sentence_batch=4096, document_batch=64, min_sentences=0), DOCUMENTS, batch_size=64)
    padded = document_outputs(inference_function(model), DOCUMENTS, batch_size=8, packed=False)
    for a, b, c in zip(small, large, padded, strict=True):
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)
        np.testing.assert_allclose(c["probabilities"], b["probabilities"], atol=1e-5)
        np.testing.assert_allclose(c["sentence_weights"], b["sentence_weights"], atol=1e-5)


def test_documents_without_words_get_finite_outputs_like_the_whole_model():
    keras.utils.set_random_seed(0)
    model = build_han(small_config(), VOCAB_SIZE, NUM_CLASSES)
    empty = [[], [np.zeros(0, dtype=np.int32)]]
    packed = document_outputs(inference_function(model, min_sentences=0), empty, batch_size=2)
    assert all(np.isfinite(out["probabilities"]).all() for out in packed)
    assert len(packed[0]["sentence_weights"]) == 0 and list(packed[1]["sentence_weights"]) == [0.0]
    mixed = document_outputs(inference_function(model, min_sentences=0), [*empty, DOCUMENTS[0]], batch_size=3)
    np.testing.assert_allclose(mixed[2]["probabilities"], _whole_model_outputs(model, DOCUMENTS[:1])[0]["probabilities"],
                               atol=1e-5)


def test_packing_pads_little_where_document_batches_pad_a_lot():
    keras.utils.set_random_seed(0)
    infer = PackedInference(build_han(small_config(), VOCAB_SIZE, NUM_CLASSES), sentence_batch=8)
    # Sentences of 1 word and of 40 words spread over every document: any batch of documents has both.
    documents = [[np.full(1 if j % 2 else 40, 2, dtype=np.int32) for j in range(8)] for _ in range(16)]
    assert infer.padding(documents)["packed_word_padding"] == 0.0  # sorted across documents: chunks of one length
    cells = sum(len(doc) * max(len(s) for s in doc) for doc in documents)
    words = sum(len(s) for doc in documents for s in doc)
    assert 1 - words / cells > 0.45  # what one padded batch of these documents computes on


def test_a_model_without_the_hans_named_layers_runs_whole_on_padded_batches():
    keras.utils.set_random_seed(0)
    han = build_han(small_config(), VOCAB_SIZE, NUM_CLASSES)
    token_ids = keras.Input(shape=(None, None), dtype="int32")
    wrapped = keras.Model(token_ids, han(token_ids))  # e.g. a HAN nested in another model, or the bench's reference
    infer = inference_function(wrapped)
    assert not isinstance(infer, PackedInference)
    whole = document_outputs(infer, DOCUMENTS, batch_size=4)
    packed = document_outputs(inference_function(han, min_sentences=0), DOCUMENTS, batch_size=4)
    for a, b in zip(whole, packed, strict=True):
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)


def test_between_runs_in_the_callers_thread_before_each_round_and_can_stop_the_work():
    """Serving passes its request's deadline check: a deadline lives in the caller's context, not the workers'."""
    import threading

    keras.utils.set_random_seed(0)
    infer = inference_function(build_han(small_config(), VOCAB_SIZE, NUM_CLASSES), sentence_batch=5, document_batch=4,
                               min_sentences=0)
    calls = []
    document_outputs(infer, DOCUMENTS, batch_size=4, between=lambda: calls.append(threading.get_ident()))
    chunks = math.ceil(sum(1 for doc in DOCUMENTS for s in doc if len(s)) / 5)
    batches = math.ceil(len(DOCUMENTS) / 4)
    rounds = math.ceil(chunks / infer.threads) + math.ceil(batches / infer.threads)
    assert len(calls) == rounds and set(calls) == {threading.get_ident()}

    class OutOfTime(Exception):
        pass

    def out_of_time():
        raise OutOfTime

    with pytest.raises(OutOfTime):
        document_outputs(infer, DOCUMENTS, batch_size=4, between=out_of_time)
    with pytest.raises(OutOfTime):  # the padded path checks between its batches too
        document_outputs(infer, DOCUMENTS, batch_size=4, packed=False, between=out_of_time)


def test_below_min_sentences_the_whole_model_runs_on_padded_batches_with_the_same_outputs():
    """Packing pays only over many sentences: a few documents (a request, a small test split) run whole."""
    keras.utils.set_random_seed(0)
    model = build_han(small_config(), VOCAB_SIZE, NUM_CLASSES)
    sentences = sum(1 for doc in DOCUMENTS for s in doc if len(s))
    infer = inference_function(model, sentence_batch=5, document_batch=4, min_sentences=sentences + 1)
    packer = inference_function(model, sentence_batch=5, document_batch=4, min_sentences=sentences)
    assert not infer.packs(DOCUMENTS) and packer.packs(DOCUMENTS)
    word_calls = []
    for each in (infer, packer):
        level = each._words
        each._words = lambda ids, level=level: word_calls.append(len(ids)) or level(ids)
    whole = document_outputs(infer, DOCUMENTS, batch_size=4)
    assert word_calls == []  # the word level alone never ran: the whole model did
    packed = document_outputs(packer, DOCUMENTS, batch_size=4)
    assert word_calls and sum(word_calls) == sentences  # every real sentence once, in chunks
    for a, b in zip(whole, packed, strict=True):
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)
        np.testing.assert_allclose(a["sentence_weights"], b["sentence_weights"], atol=1e-5)
        for mine, theirs in zip(a["word_weights"], b["word_weights"], strict=True):
            np.testing.assert_allclose(mine, theirs, atol=1e-5)
    assert inference_function(model).min_sentences == PACK_MIN_SENTENCES
