"""The record types that flow out of readers: a document, or a rejected input with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RawDocument:
    """One input document as read, before validation.

    ``source`` says where it came from in a way a person can open: ``path`` or
    ``path:line`` / ``path:row`` / ``archive.tar.gz!member``. ``split`` is the dataset's own
    split (``"train"``/``"test"``) when the source has one, else ``None``. ``meta`` carries
    extras that later stages use (the demo corpus stores ``evidence`` sentence positions).
    ``decode_errors`` counts bytes that could not be decoded with the primary encoding.
    """

    id: str | None
    text: str | None
    label: str | tuple[str, ...] | None  # a tuple (sorted, each once) with data.multilabel
    source: str
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    decode_errors: int = 0


@dataclass(frozen=True)
class Rejected:
    """An input record that could not become a document, with where and why."""

    source: str
    reason: str
    detail: str = ""
    id: str | None = None
    label: str | tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "id": self.id, "label": self.label, "reason": self.reason, "detail": self.detail}


def label_members(label: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """The labels of a document's label value: a single label (one), a multi-label set (each), none."""
    if label is None:
        return ()
    return (label,) if isinstance(label, str) else tuple(label)


# Quarantine reasons: stable strings, counted in the manifest and documented in the README.
EMPTY_TEXT = "empty_text"
MISSING_LABEL = "missing_label"
UNKNOWN_LABEL = "unknown_label"
DUPLICATE_ID = "duplicate_id"
UNPARSABLE = "unparsable"
TOO_LARGE = "too_large"
NO_TOKENS = "no_tokens"
