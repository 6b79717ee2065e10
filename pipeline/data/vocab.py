"""Word vocabulary: token <-> id, fitted on the training split only, persisted as JSON.

Id 0 is padding and id 1 stands for every word outside the vocabulary; real words follow in
a deterministic order (count descending, then token ascending).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PAD, OOV = 0, 1
PAD_TOKEN, OOV_TOKEN = "<pad>", "<oov>"
RESERVED = (PAD_TOKEN, OOV_TOKEN)

VOCAB_FORMAT = "vocabulary"
FORMAT_VERSION = 1


class Vocabulary:
    """Token ids for the ``max_size - 2`` most frequent words seen at least ``min_count`` times.

    ``tokens`` lists every token in id order (``tokens[0] == "<pad>"``, ``tokens[1] == "<oov>"``);
    ``counts`` gives each word's training count; ``corpus_tokens`` and ``corpus_types`` describe
    the whole counted corpus, including the words that were left out.
    """

    def __init__(
        self,
        tokens: list[str],
        counts: Mapping[str, int],
        min_count: int,
        max_size: int,
        corpus_tokens: int = 0,
        corpus_types: int = 0,
    ) -> None:
        _check_limits(min_count, max_size)
        if tuple(tokens[:2]) != RESERVED:
            raise ValueError(f"a vocabulary starts with {list(RESERVED)}, got {tokens[:2]}")
        if len(set(tokens)) != len(tokens):
            duplicates = sorted(token for token, n in Counter(tokens).items() if n > 1)
            raise ValueError(f"a vocabulary lists each token once; repeated: {duplicates[:5]}")
        if len(tokens) > max_size:
            raise ValueError(f"{len(tokens)} tokens exceed max_size={max_size}")
        self.tokens = list(tokens)
        self.counts = {token: int(counts.get(token, 0)) for token in self.tokens[2:]}
        self.min_count = min_count
        self.max_size = max_size
        self.corpus_tokens = corpus_tokens
        self.corpus_types = corpus_types
        # Reserved names are not words: text that happens to contain "<pad>" gets OOV, never padding.
        self._ids = {token: index for index, token in enumerate(self.tokens) if index >= 2}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, documents: Iterable[list[list[str]]], min_count: int, max_size: int) -> Vocabulary:
        """Count the tokens of ``documents`` (each a list of sentences of tokens) and keep the frequent ones."""
        counts: Counter[str] = Counter()
        for sentences in documents:
            for sentence in sentences:
                counts.update(sentence)
        return cls.from_counts(counts, min_count, max_size)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int, max_size: int) -> Vocabulary:
        """A vocabulary from token counts, e.g. ``Counter`` objects summed over worker processes."""
        _check_limits(min_count, max_size)
        words = [(token, count) for token, count in counts.items() if count >= min_count and token not in RESERVED]
        words.sort(key=lambda item: (-item[1], item[0]))
        kept = words[: max_size - len(RESERVED)]
        return cls(
            [*RESERVED, *(token for token, _ in kept)],
            dict(kept),
            min_count,
            max_size,
            corpus_tokens=sum(counts.values()),
            corpus_types=len(counts),
        )

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._ids

    def encode(self, tokens: Iterable[str]) -> list[int]:
        ids = self._ids
        return [ids.get(token, OOV) for token in tokens]

    def oov_rate(self, documents: Iterable[list[list[str]]]) -> float:
        """Fraction of the tokens in ``documents`` that map to OOV (0.0 when there are none)."""
        total = unknown = 0
        ids = self._ids
        for sentences in documents:
            for sentence in sentences:
                total += len(sentence)
                unknown += sum(1 for token in sentence if token not in ids)
        return unknown / total if total else 0.0

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "version": FORMAT_VERSION,
            "min_count": self.min_count,
            "max_size": self.max_size,
            "size": len(self.tokens),
            "corpus_tokens": self.corpus_tokens,
            "corpus_types": self.corpus_types,
            "tokens": self.tokens,
            "counts": [self.counts.get(token, 0) for token in self.tokens],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a vocabulary JSON: format is {found!r}, expected {VOCAB_FORMAT!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"vocabulary JSON has version {data.get('version')!r}; this code reads version {FORMAT_VERSION}. "
                "Re-run preprocessing to rebuild it."
            )
        try:
            tokens, counts = data["tokens"], data["counts"]
            if len(tokens) != len(counts):
                raise ValueError(f"{len(tokens)} tokens but {len(counts)} counts")
            return cls(
                tokens,
                dict(zip(tokens, counts, strict=True)),
                data["min_count"],
                data["max_size"],
                corpus_tokens=data.get("corpus_tokens", 0),
                corpus_types=data.get("corpus_types", 0),
            )
        except KeyError as err:
            raise ValueError(f"vocabulary JSON lacks the field {err.args[0]!r}; re-run preprocessing") from None

    def save(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, ensure_ascii=False)
            handle.write("\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary file {path} does not exist; run preprocessing first") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); re-run preprocessing") from None
        try:
            return cls.from_json(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # mutable-looking value object: equality by content, not hashable

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, min_count={self.min_count}, max_size={self.max_size})"


def _check_limits(min_count: int, max_size: int) -> None:
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_size < len(RESERVED) + 1:
        raise ValueError(f"max_size counts {PAD_TOKEN} and {OOV_TOKEN}, so it must be >= 3, got {max_size}")
