"""Validate read records: keep the usable documents, quarantine the rest with a reason.

Every input record ends up in exactly one of ``kept`` or ``quarantined``, so that
``input == kept + quarantined`` holds and the quarantine file explains every missing document.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from pipeline.artifacts import replacing_file
from pipeline.data.records import (
    DUPLICATE_ID,
    EMPTY_TEXT,
    MISSING_LABEL,
    TOO_LARGE,
    UNKNOWN_LABEL,
    RawDocument,
    Rejected,
    label_members,
)


class Validator:
    """Checks one record at a time, so a stream of any length can be validated.

    Checks, in order: text present (``empty_text``), at most ``max_chars`` characters, also after
    ``normalization`` (``too_large``: NFKC writes some characters as up to 18), a label (``missing_label``), one of ``allowed_labels`` when given
    (``unknown_label``), an id not seen before (``duplicate_id``: the first is kept). A document
    without an id gets its ``source`` as id. ``Rejected`` records from the reader pass through.
    It remembers each id and where it was first seen (for the duplicate check), nothing else.
    """

    def __init__(self, allowed_labels: list[str] | None, max_chars: int, normalization: str = "none") -> None:
        self.allowed = set(allowed_labels) if allowed_labels is not None else None
        self.max_chars = max_chars
        self.normalization = normalization
        self.first_source: dict[str, str] = {}

    def check(self, record: RawDocument | Rejected) -> RawDocument | Rejected:
        """The document (its id filled in) when it is usable, else why not."""
        if isinstance(record, Rejected):
            return record
        doc_id = record.id if record.id is not None else record.source
        problem = _problem(record, doc_id, self.allowed, self.max_chars, self.first_source, self.normalization)
        if problem is not None:
            reason, detail = problem
            return Rejected(record.source, reason, detail, id=record.id, label=record.label)
        self.first_source[doc_id] = record.source
        return record if record.id is not None else dataclasses.replace(record, id=doc_id)


def _problem(
    doc: RawDocument, doc_id: str, allowed: set[str] | None, max_chars: int, first_source: dict[str, str],
    normalization: str = "none",
) -> tuple[str, str] | None:
    """The first rule ``doc`` breaks, as (reason, detail), or None when it is fine."""
    if doc.text is None or not doc.text.strip():
        return EMPTY_TEXT, "no text" if doc.text is None else "the text is empty or only whitespace"
    if len(doc.text) > max_chars:
        return TOO_LARGE, (
            f"the text has {len(doc.text):,} characters, more than the limit of {max_chars:,}; "
            "raise data.max_chars to keep documents this long"
        )
    if normalization != "none" and not doc.text.isascii():
        normalized = len(unicodedata.normalize(normalization, doc.text))
        if normalized > max_chars:
            return TOO_LARGE, (
                f"the text has {normalized:,} characters after {normalization} normalization "
                f"(preprocess.unicode_normalization; {len(doc.text):,} before), more than the limit of {max_chars:,}; "
                "raise data.max_chars to keep documents this long"
            )
    if doc.label is None:
        return MISSING_LABEL, "no label (empty or absent label field, or an empty list)"
    if allowed is not None:
        unknown = [label for label in label_members(doc.label) if label not in allowed]
        if unknown:
            return UNKNOWN_LABEL, (f"label {unknown[0]!r} is not in data.labels: {', '.join(sorted(allowed))}"
                                   + (f" ({len(unknown)} of the document's labels are not)" if len(unknown) > 1 else ""))
    if doc_id in first_source:
        return DUPLICATE_ID, f"id {doc_id!r} was already used by {first_source[doc_id]}, which is kept"
    return None


def write_quarantine(path: Path, rejected: Iterable[Rejected]) -> int:
    """Write ``rejected`` as JSON Lines (one object per record) to ``path``; return how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with replacing_file(path) as out:  # a reader never sees a half-written quarantine file, nor a full disk a leftover
        for record in rejected:
            out.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count
