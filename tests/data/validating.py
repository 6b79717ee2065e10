"""Validate a list of records in memory, for tests (the pipeline validates a stream: ``Validator``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.records import RawDocument, Rejected, label_members
from pipeline.data.validate import Validator


@dataclass
class ValidationResult:
    """The documents kept (ids filled in), the records quarantined, and the label set of the kept."""

    kept: list[RawDocument] = field(default_factory=list)
    quarantined: list[Rejected] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    input_count: int = 0

    def counts(self) -> dict[str, Any]:
        by_reason = Counter(r.reason for r in self.quarantined)
        return {
            "input": self.input_count,
            "kept": len(self.kept),
            "quarantined": len(self.quarantined),
            "by_reason": dict(sorted(by_reason.items())),
        }


def validate_documents(
    records: Iterable[RawDocument | Rejected], allowed_labels: list[str] | None, max_chars: int
) -> ValidationResult:
    """Sort ``records`` into kept documents and quarantined ones (all in memory; see ``Validator``)."""
    result = ValidationResult()
    validator = Validator(allowed_labels, max_chars)
    for record in records:
        result.input_count += 1
        outcome = validator.check(record)
        (result.quarantined if isinstance(outcome, Rejected) else result.kept).append(outcome)
    result.labels = sorted({label for doc in result.kept for label in label_members(doc.label)})
    return result
