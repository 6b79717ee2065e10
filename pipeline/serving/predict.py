"""``python -m pipeline predict``: classify raw text and show the sentences the model attended to.

The model is the last train stage's raw-text bundle for ``--config`` (the same code path as the
MLflow pyfunc model), or any MLflow model URI given with ``--model`` (``models:/han-demo@champion``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.serving import limits

# A file larger than a request may be (in characters) could not be classified in one request either.
MAX_INPUT_BYTES = limits.default("max_characters")


def read_inputs(text: str | None, file: str | None) -> list[str]:
    """The text to classify: the argument, a file (``-`` = stdin), never both, never neither."""
    if text is not None and file is not None:
        raise ValueError("give the text either as an argument or with --file, not both")
    if file is not None:
        if file == "-":
            return [sys.stdin.read()]
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"--file {file}: no such file")
        if path.stat().st_size > MAX_INPUT_BYTES:
            raise ValueError(f"--file {file}: {path.stat().st_size:,} bytes is over the {MAX_INPUT_BYTES:,}-byte limit")
        return [path.read_text(encoding="utf-8", errors="replace")]
    if text is None or not text.strip():
        raise ValueError('nothing to classify: pass the text, e.g. predict "Some text.", or --file PATH')
    return [text]


def predict(config: PipelineConfig, texts: list[str], model_uri: str | None = None) -> list[dict[str, Any]]:
    """One result per text: label, probabilities, sentences, sentence_weights (and words, word_weights)."""
    if model_uri:
        import pandas as pd

        from pipeline.serving.bundle import load_raw_text_model
        from pipeline.tracking import connect

        connect()
        frame = load_raw_text_model(model_uri).predict(pd.DataFrame({"text": texts}))
        return frame.to_dict(orient="records")
    from pipeline.serving.bundle import RawTextClassifier

    bundle = config.stage_dir("train") / "bundle"
    if not bundle.is_dir():
        raise FileNotFoundError(f"no trained model for config {config.name!r} in {bundle}; run `{config.command('train')}` "
                                f"(or `{config.command('pipeline')}`) first, or pass --model URI")
    return RawTextClassifier.from_directory(bundle).predict(texts)


def _shade(weight: float, text: str, colour: bool) -> str:
    if not colour:
        return text
    level = 255 - int(min(1.0, max(0.0, weight)) ** 0.5 * 200)  # yellow background, stronger = heavier
    return f"\x1b[48;2;255;255;{level}m\x1b[30m{text}\x1b[0m"


def render(result: dict[str, Any], explain: bool = False, top: int = 3, colour: bool | None = None) -> str:
    """The terminal answer: label and probabilities; with ``explain``, the top sentences by weight."""
    if result.get("error"):
        return f"error: {result['error']}"
    if colour is None:
        colour = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
    probabilities = sorted(result["probabilities"].items(), key=lambda item: -item[1])
    label = result["label"]
    shown = probabilities if len(probabilities) <= 10 else probabilities[:10]  # a multi-label model may have 90
    lines = [f"labels: {', '.join(label)}" if isinstance(label, list) else f"label: {label}",
             "probabilities: " + ", ".join(f"{name} {p:.3f}" for name, p in shown)
             + (f" (top 10 of {len(probabilities)})" if len(shown) < len(probabilities) else "")]
    if explain:
        weights = list(result["sentence_weights"])
        order = sorted(range(len(weights)), key=lambda i: -weights[i])[:top]
        lines.append(f"top {len(order)} of {len(weights)} sentences by attention:")
        for i in order:
            lines.append(f"  [{weights[i]:.3f}] #{i + 1}: " + _shade(weights[i], result["sentences"][i], colour))
            words = result.get("words") or []
            if i < len(words):
                pairs = sorted(zip(words[i], result["word_weights"][i], strict=True), key=lambda pair: -pair[1])
                key = [f"{token} {weight:.2f}" for token, weight in pairs if any(ch.isalnum() for ch in token)][:5]
                lines.append("      key words: " + ", ".join(key))
        if result.get("truncated"):
            lines.append("  (the text was longer than the model reads; the rest was cut)")
    return "\n".join(lines)
