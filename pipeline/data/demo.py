"""The built-in demo corpus: synthetic documents whose label is decided by one or two sentences.

Each document hides 1-2 EVIDENCE sentences (a keyword of the true class in an affirmative
frame) among NEUTRAL filler and DISTRACTOR sentences (a keyword of any class, the true one
included, in a negated, dismissive or hypothetical frame). Keyword counts therefore carry
only a weak label signal, so a bag of words does poorly, while a model that reads each
sentence and attends to the affirmative one can be exact. All text comes from the word lists
below; every sentence ends with the only "." it contains, so any splitter recovers them.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import DemoCorpusConfig
from pipeline.data.records import RawDocument

CLASS_NAMES: tuple[str, ...] = ("sport", "science", "finance", "cooking", "music", "travel")

# Single nouns, so a unigram model sees each mention as one feature; none is shared between classes.
CLASS_KEYWORDS: dict[str, tuple[str, ...]] = {
    "sport": ("football", "tennis", "marathon", "stadium", "goalkeeper", "referee", "tournament", "cyclist"),
    "science": ("telescope", "molecule", "experiment", "laboratory", "physicist", "genome", "microscope", "galaxy"),
    "finance": ("stocks", "bonds", "banker", "inflation", "dividend", "mortgage", "investor", "budget"),
    "cooking": ("recipe", "oven", "pastry", "chef", "soup", "spices", "dough", "kitchen"),
    "music": ("guitar", "orchestra", "melody", "concert", "drummer", "album", "violin", "choir"),
    "travel": ("airport", "passport", "hotel", "luggage", "cruise", "tourist", "island", "backpacker"),
}

# Affirmative frames: the document is about {kw}. They share content words ("report", "covered",
# "focused", "discussed") with the distractor frames but never a negating or hedging word.
EVIDENCE_FRAMES: tuple[str, ...] = (
    "the report was mainly about the {kw}",
    "most of the talk covered the {kw}",
    "the whole piece focused on the {kw}",
    "everyone in the group discussed the {kw} at length",
    "the main topic was clearly the {kw}",
    "this story is really about the {kw}",
    "the writer spent most pages on the {kw}",
    "above all the article explains the {kw}",
    "the article gives a detailed account of the {kw}",
    "at its heart the text deals with the {kw}",
    "the editors chose the {kw} as the central subject",
    "readers learn a great deal about the {kw} here",
)

# Frames that mention {kw} without making it the subject: negation ("not", "never", "nobody",
# "no", "nothing"), dismissal ("skipped", "ignores", "passing") or hypothesis ("if", "perhaps").
DISTRACTOR_FRAMES: tuple[str, ...] = (
    "the report was not about the {kw}",
    "the talk never covered the {kw}",
    "nobody in the group discussed the {kw}",
    "the main topic was certainly not the {kw}",
    "this story has nothing to do with the {kw}",
    "the writer skipped the {kw} entirely",
    "the article ignores the {kw} completely",
    "only a passing remark mentioned the {kw}",
    "if the piece had focused on the {kw} it would be a different story",
    "some readers expected the {kw} but it never came up",
    "there is no word about the {kw} in the text",
    "perhaps a later issue will discuss the {kw}",
    "the editors refused to cover the {kw}",
    "few people here cared about the {kw}",
    "the author said little and nothing new about the {kw}",
    "an earlier draft mentioned the {kw} but the editors cut it",
)

# Filler sentences: subject + predicate, never a class keyword.
FILLER_SUBJECTS: tuple[str, ...] = (
    "the weather", "my neighbour", "the old bridge", "a small dog", "the morning bus", "our street",
    "the committee", "the new library", "a quiet cafe", "the printer", "the garden", "her cousin",
    "the corner shop", "the town hall", "a tall stranger", "the river path", "the school gate",
)
FILLER_PREDICATES: tuple[str, ...] = (
    "was unusually calm", "stayed open late", "needed a fresh coat of paint", "made a strange noise",
    "changed its schedule", "looked different", "was busy", "seemed smaller than before",
    "got a new sign", "was closed for repairs", "attracted a small crowd", "felt very cold",
    "was painted green", "was mentioned in a letter", "did not change at all", "waited patiently",
)

# Optional phrases that stretch any sentence, so lengths vary and no word is always sentence-final
# (Punkt, when trained on this corpus, would otherwise learn such a word as an abbreviation).
OPENERS: tuple[str, ...] = (
    "later that day", "in the end", "as expected", "for a change", "once again", "to be honest",
    "by the way", "at first",
)
TAILS: tuple[str, ...] = (
    "in the afternoon", "for a while", "after the long weekend", "near the river", "as usual",
    "according to a neighbour", "without much fuss", "during the winter", "on a grey morning",
    "before the holidays", "with some friends", "in the small town", "at the end of the week",
    "under a clear sky", "for the first time",
)

MAX_SENTENCE_WORDS = 25
MIN_DISTRACTORS, MAX_DISTRACTORS = 2, 5


def generate_demo_corpus(config: DemoCorpusConfig, seed: int) -> list[RawDocument]:
    """``config.num_documents`` documents over the first ``config.num_classes`` class names.

    Deterministic in ``(config, seed)``. Labels are round-robin then shuffled, so classes differ
    in size by at most one. ``meta["evidence"]`` holds the sorted 0-based positions of the
    evidence sentences; ``meta["num_sentences"]`` the number of sentences in ``text``.
    """
    rng = np.random.default_rng(seed)
    classes = CLASS_NAMES[: config.num_classes]
    labels = [classes[i % len(classes)] for i in range(config.num_documents)]
    rng.shuffle(labels)
    documents = []
    for number, label in enumerate(labels, start=1):
        sentences, evidence = _document_sentences(rng, config, label, classes)
        documents.append(
            RawDocument(
                id=f"demo-{number:05d}",
                text=" ".join(sentences),
                label=label,
                source=f"demo:seed={seed}:doc={number}",
                meta={"evidence": evidence, "num_sentences": len(sentences)},
            )
        )
    return documents


def _document_sentences(
    rng: np.random.Generator, config: DemoCorpusConfig, label: str, classes: tuple[str, ...]
) -> tuple[list[str], list[int]]:
    """The sentences of one document and the sorted positions of its evidence sentences."""
    num_sentences = int(rng.integers(config.min_sentences, config.max_sentences + 1))
    num_evidence = int(rng.integers(1, 3))
    num_distractors = min(int(rng.integers(MIN_DISTRACTORS, MAX_DISTRACTORS + 1)), num_sentences - num_evidence)
    kinds = ["evidence"] * num_evidence + ["distractor"] * num_distractors
    kinds += ["filler"] * (num_sentences - len(kinds))
    rng.shuffle(kinds)

    # Two evidence sentences name two different keywords, as a real article would vary its words.
    evidence_keywords = iter(rng.permutation(CLASS_KEYWORDS[label])[:num_evidence].tolist())
    sentences = []
    for kind in kinds:
        if kind == "evidence":
            core = _pick(rng, EVIDENCE_FRAMES).format(kw=next(evidence_keywords))
        elif kind == "distractor":
            # Any class, the true one included, so a mention alone says little about the label.
            mentioned = _pick(rng, classes)
            core = _pick(rng, DISTRACTOR_FRAMES).format(kw=_pick(rng, CLASS_KEYWORDS[mentioned]))
        else:
            core = f"{_pick(rng, FILLER_SUBJECTS)} {_pick(rng, FILLER_PREDICATES)}"
        sentences.append(_stretch(rng, core))
    evidence = [i for i, kind in enumerate(kinds) if kind == "evidence"]
    return sentences, evidence


def _stretch(rng: np.random.Generator, core: str) -> str:
    """``core`` with an optional opener and 0-3 tails, capitalised and ending in its only "."."""
    words = core.split()
    if rng.random() < 0.3:
        words = _pick(rng, OPENERS).split() + words
    # Distinct tails: a repeated phrase reads as a generator glitch, not as text.
    for index in rng.permutation(len(TAILS))[: int(rng.integers(0, 4))]:
        tail = TAILS[index].split()
        if len(words) + len(tail) > MAX_SENTENCE_WORDS:
            break
        words += tail
    sentence = " ".join(words)
    return sentence[0].upper() + sentence[1:] + "."


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]
