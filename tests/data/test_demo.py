"""Behavioural tests of the demo corpus: its format, and that only a sentence-level reader solves it."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTrainer
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from pipeline.config import DemoCorpusConfig, PunktConfig
from pipeline.data.demo import (
    CLASS_KEYWORDS,
    CLASS_NAMES,
    DISTRACTOR_FRAMES,
    EVIDENCE_FRAMES,
    MAX_SENTENCE_WORDS,
    generate_demo_corpus,
)

KEYWORD_CLASS = {kw: name for name, keywords in CLASS_KEYWORDS.items() for kw in keywords}
SENTENCE_BOUNDARY = re.compile(r"(?<=\.) ")


def split_sentences(text: str) -> list[str]:
    return SENTENCE_BOUNDARY.split(text)


def words_of(sentence: str) -> list[str]:
    return sentence.lower().rstrip(".").split()


def keyword_classes(sentence: str) -> list[str]:
    return [KEYWORD_CLASS[w] for w in words_of(sentence) if w in KEYWORD_CLASS]


@pytest.fixture(scope="module")
def corpus():
    """1200 documents, 4 classes, seed 42: the default demo configuration."""
    return generate_demo_corpus(DemoCorpusConfig(num_documents=1200, num_classes=4), seed=42)


def test_same_seed_same_corpus_and_other_seed_differs():
    config = DemoCorpusConfig(num_documents=50)
    first = generate_demo_corpus(config, seed=7)
    assert first == generate_demo_corpus(config, seed=7)
    assert [d.text for d in first] != [d.text for d in generate_demo_corpus(config, seed=8)]


def test_class_names_and_keywords_cover_every_allowed_class_count():
    assert len(CLASS_NAMES) >= 6 and set(CLASS_NAMES) == set(CLASS_KEYWORDS)
    assert len(KEYWORD_CLASS) == sum(len(k) for k in CLASS_KEYWORDS.values()), "a keyword belongs to two classes"


@pytest.mark.parametrize("num_classes", [4, 5, 6])
def test_uses_the_first_classes_in_balanced_numbers(num_classes):
    docs = generate_demo_corpus(DemoCorpusConfig(num_documents=101, num_classes=num_classes), seed=1)
    counts = Counter(d.label for d in docs)
    assert set(counts) == set(CLASS_NAMES[:num_classes])
    assert max(counts.values()) - min(counts.values()) <= 1


def test_records_have_ids_sources_and_no_split(corpus):
    assert [d.id for d in corpus[:2]] == ["demo-00001", "demo-00002"]
    assert corpus[0].source == "demo:seed=42:doc=1"
    assert len({d.id for d in corpus}) == len(corpus)
    assert all(d.split is None and d.decode_errors == 0 for d in corpus)


@pytest.mark.parametrize("low, high", [(3, 3), (3, 8), (5, 30)])
def test_sentence_counts_lie_in_the_configured_range(low, high):
    config = DemoCorpusConfig(num_documents=200, min_sentences=low, max_sentences=high)
    docs = generate_demo_corpus(config, seed=3)
    counts = [d.meta["num_sentences"] for d in docs]
    assert min(counts) >= low and max(counts) <= high
    if high - low >= 5:
        assert min(counts) == low and max(counts) == high, "sentence counts should span the range"
    for doc in docs:
        assert len(split_sentences(doc.text)) == doc.meta["num_sentences"]


def test_sentences_are_plain_words_with_one_final_period(corpus):
    lengths = []
    for doc in corpus[:300]:
        for sentence in split_sentences(doc.text):
            assert sentence.endswith(".") and sentence.count(".") == 1, sentence
            assert re.fullmatch(r"[A-Za-z]+( [a-z]+)*\.", sentence), sentence
            lengths.append(len(words_of(sentence)))
    assert min(lengths) >= 4 and max(lengths) <= MAX_SENTENCE_WORDS
    assert np.std(lengths) > 3, "sentence lengths should vary"


def test_a_punkt_model_trained_on_the_corpus_splits_exactly_the_generated_sentences(corpus):
    texts = [d.text for d in corpus[:400]]
    trainer = PunktTrainer()
    trainer.train("\n\n".join(texts), finalize=True)
    params = trainer.get_params()
    params.abbrev_types |= set(PunktConfig().extra_abbreviations)
    tokenizer = PunktSentenceTokenizer(params)
    for text in texts:
        assert tokenizer.tokenize(text) == split_sentences(text)
        assert tokenizer.tokenize(text.lower()) == split_sentences(text.lower())


def test_one_or_two_evidence_sentences_each_naming_the_true_class(corpus):
    for doc in corpus:
        evidence = doc.meta["evidence"]
        assert 1 <= len(evidence) <= 2 and evidence == sorted(set(evidence))
        assert all(0 <= i < doc.meta["num_sentences"] for i in evidence)
        sentences = split_sentences(doc.text)
        for i in evidence:
            assert keyword_classes(sentences[i]) == [doc.label], sentences[i]


def test_distractors_mention_the_true_class_and_others(corpus):
    mentions = Counter()
    for doc in corpus:
        sentences = split_sentences(doc.text)
        for i, sentence in enumerate(sentences):
            if i not in doc.meta["evidence"]:
                mentions.update("true" if c == doc.label else "other" for c in keyword_classes(sentence))
    # Uniform over 4 classes: about one mention in four names the true class.
    assert 0.15 < mentions["true"] / (mentions["true"] + mentions["other"]) < 0.35


def test_every_distractor_frame_has_a_word_no_evidence_frame_uses():
    evidence_words = {w for frame in EVIDENCE_FRAMES for w in frame.split()}
    for frame in DISTRACTOR_FRAMES:
        assert set(frame.split()) - evidence_words, f"{frame!r} cannot be told from an evidence frame"
    negations = {"not", "never", "nobody", "no", "nothing", "if", "perhaps", "few"}
    assert not evidence_words & negations


def test_bag_of_words_is_weak_while_reading_the_evidence_sentences_is_exact(corpus):
    texts, labels = [d.text for d in corpus], [d.label for d in corpus]
    cut = int(0.8 * len(corpus))
    vectorizer = TfidfVectorizer()
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(texts[:cut]), labels[:cut])
    bow_accuracy = model.score(vectorizer.transform(texts[cut:]), labels[cut:])
    assert 0.3 <= bow_accuracy <= 0.75, f"unigram bag-of-words accuracy {bow_accuracy:.3f}"

    def oracle(doc):
        sentences = split_sentences(doc.text)
        return Counter(c for i in doc.meta["evidence"] for c in keyword_classes(sentences[i])).most_common(1)[0][0]

    assert all(oracle(doc) == doc.label for doc in corpus[cut:])


def test_a_sentence_level_reader_learns_the_task_without_evidence_positions(corpus):
    """Learn 'is this keyword sentence affirmative' from words; read the keyword of the best one."""
    cut = int(0.8 * len(corpus))

    def keyword_sentences(doc):
        for i, sentence in enumerate(split_sentences(doc.text)):
            found = keyword_classes(sentence)
            if found:
                frame = " ".join(w for w in words_of(sentence) if w not in KEYWORD_CLASS)
                yield frame, found[0], i in doc.meta["evidence"]

    train = [item for doc in corpus[:cut] for item in keyword_sentences(doc)]
    vectorizer = CountVectorizer(binary=True)
    is_evidence = LogisticRegression(max_iter=2000).fit(
        vectorizer.fit_transform([frame for frame, _, _ in train]), [flag for _, _, flag in train]
    )
    correct = 0
    for doc in corpus[cut:]:
        items = list(keyword_sentences(doc))
        scores = is_evidence.predict_proba(vectorizer.transform([frame for frame, _, _ in items]))[:, 1]
        correct += items[int(np.argmax(scores))][1] == doc.label
    assert correct / (len(corpus) - cut) >= 0.98
