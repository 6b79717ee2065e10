"""Ragged encoded documents (the preprocess stage's ``*.npz``) -> dense int batches padded only to their own maxima."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class EncodedSplit:
    """One split as written by preprocessing: flat token ids plus the lengths that cut them up.

    ``tokens`` (total_words,), ``sentence_lengths`` (total_sentences,), ``document_lengths``
    (documents,), ``labels`` (documents,), ``ids`` (documents,).
    """

    tokens: np.ndarray
    sentence_lengths: np.ndarray
    document_lengths: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    @classmethod
    def load(cls, path: Path) -> EncodedSplit:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in ("tokens", "sentence_lengths", "document_lengths", "labels", "ids")})

    def __len__(self) -> int:
        return len(self.labels)

    def documents(self) -> list[list[np.ndarray]]:
        """Each document as a list of sentence id arrays."""
        sentences = np.split(self.tokens, np.cumsum(self.sentence_lengths)[:-1]) if len(self.tokens) else []
        bounds = np.concatenate([[0], np.cumsum(self.document_lengths)])
        return [sentences[bounds[i] : bounds[i + 1]] for i in range(len(self))]


def pad_batch(documents: list[list[np.ndarray]]) -> np.ndarray:
    """Dense ``(batch, max_sentences, max_words)`` int32, 0 = padding, sized to this batch only."""
    max_sentences = max((len(doc) for doc in documents), default=0) or 1
    max_words = max((len(s) for doc in documents for s in doc), default=0) or 1
    batch = np.zeros((len(documents), max_sentences, max_words), dtype=np.int32)
    for i, doc in enumerate(documents):
        for j, sentence in enumerate(doc):
            batch[i, j, : len(sentence)] = sentence
    return batch
