"""Explanations people can read: the HAN paper's sentence/word heatmap as one self-contained HTML page.

One explanation record per document (what the explain stage writes to ``explanations.jsonl``)::

    {"id": str, "label": str | None, "predicted": str, "probabilities": {label: float},
     "confidence": float, "correct": bool | None, "truncated": bool,
     "sentences": [{"text": str, "weight": float, "words": [[token, weight], ...]}, ...]}

A multi-label model's records hold label lists in ``label`` and ``predicted``, and ``label_evidence``:
per predicted label, the sentence whose removal lowers that label's probability most (``sentence``,
0-based, and ``drop``), since attention is shared by all labels.

A sentence's ``text`` is the sentence as written (after the preprocessing's whitespace and markup
clean-up); ``words`` are the model's tokens (lowercased, split). Sentence weights of a document sum
to 1, word weights of a sentence sum to 1.

The page is opened offline from the MLflow UI's artifact viewer (a sandboxed iframe), so it has no
external resources at all: inline CSS, a few lines of vanilla JavaScript for the filters, and the
stages' plots as ``data:`` URIs. Every sentence of every document is in the HTML itself (nothing is
loaded later), and the page reads fine with scripts off (the filters and the token toggle need them). Reports
can hold thousands of documents, so each word costs one ``<span>`` with a single custom property
(its shade) and a tooltip, the token rows are not displayed until asked for, and the browser skips
laying out documents that are off screen (``content-visibility``).
"""

from __future__ import annotations

import base64
import html
import json
import math
import struct
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Word shade: blue, the sentence column: red, as in Yang et al. (2016), figure 5.
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222;max-width:75em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
[hidden]{display:none!important}
.counts,.legend{color:#444}.notes li{margin:.15em 0}
.toc{background:#f7f7f7;border:1px solid #ddd;border-radius:5px;padding:.4em .8em;display:inline-block}
.toc ol{margin:.2em 0;padding-left:1.6em}.toc li{margin:.1em 0}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.figs figure{margin:0;max-width:100%}.figs img{display:block;width:100%;height:auto}
.figs figcaption{font-size:.85em;color:#555;margin-top:.2em}
.filters{position:sticky;top:0;background:#f7f7f7;border:1px solid #ddd;padding:.5em .7em;display:flex;gap:1.2em;
 flex-wrap:wrap;align-items:center;z-index:1}
#f-count{font-weight:600}
.doc{border:1px solid #ddd;border-left:4px solid #5cb85c;border-radius:5px;margin:.9em 0;padding:.5em .8em;
 content-visibility:auto;contain-intrinsic-size:auto 20em;scroll-margin-top:4em}
.doc.wrong{border-left-color:#d9534f}.doc.unknown{border-left-color:#aaa}
.head{display:flex;gap:1em;flex-wrap:wrap;align-items:baseline}
.badge{padding:0 .45em;border-radius:3px;font-size:.8em;color:#fff;background:#5cb85c}
.wrong .badge{background:#d9534f}.trunc{font-size:.8em;color:#8a6d3b}.ev{font-size:.8em;color:#31708f}
.probs{display:flex;gap:.9em;flex-wrap:wrap;font-size:.8em;color:#555;margin:.2em 0 .5em}
.probs .top{color:#000;font-weight:600}
.pb{display:inline-block;width:4em;height:.55em;margin:0 .3em;vertical-align:middle;
 background:linear-gradient(90deg,#337ab7 calc(var(--w)*100%),#e6e6e6 0)}
.s{display:flex;gap:.5em;align-items:flex-start;margin:.12em 0}
.sb{flex:0 0 3em;height:1.1em;margin-top:.15em;border-radius:2px;
 background:linear-gradient(90deg,#c9302c calc(var(--w)*100%),#f1dede 0)}
.sn{flex:0 0 3.2em;font-size:.8em;color:#666;text-align:right;padding-top:.1em}
.c{flex:1}.t{--a:0;display:none}.t span{background:rgba(31,100,224,var(--a));border-radius:2px}
.showtokens .t{display:block}.showtokens .o{display:block;color:#666;font-size:.85em}
.summary table{width:100%;border-collapse:collapse}.summary td:nth-child(3){width:33%}
.summary td,.summary th{border-bottom:1px solid #eee;padding:.2em .6em;text-align:left;vertical-align:top}
.summary ol{margin:0;padding-left:1.4em}
"""

_JS = """
(function(){
var $=function(id){return document.getElementById(id);};
var docs=document.querySelectorAll('section.doc');
var p=$('f-predicted'),t=$('f-true'),c=$('f-correct'),m=$('f-confidence');
function has(d,v,x){return d.multi?JSON.parse(v).indexOf(x)>=0:v===x;}
function apply(){
 var min=parseFloat(m.value),shown=0;
 $('f-confidence-value').textContent=min.toFixed(2);
 for(var i=0;i<docs.length;i++){
  var d=docs[i].dataset;
  var ok=(p.selectedIndex===0||has(d,d.predicted,p.value))&&(t.selectedIndex===0||has(d,d.label,t.value))&&
   (c.selectedIndex===0||d.correct===c.value)&&parseFloat(d.confidence)>=min;
  docs[i].hidden=!ok;if(ok)shown++;
 }
 $('f-count').textContent=shown+' of '+docs.length+' documents shown';
}
[p,t,c,m].forEach(function(e){e.addEventListener('input',apply);e.addEventListener('change',apply);});
var k=$('f-tokens');function tokens(){document.body.classList.toggle('showtokens',k.checked);}
k.addEventListener('change',tokens);
tokens();apply();
})();
"""


# --------------------------------------------------------------------------- numbers
def shade(sentence_weight: float, word_weight: float) -> float:
    """The HAN paper's word shade: √(sentence weight) × word weight (Yang et al., 2016).

    Word weights are relative to their sentence, so multiplying by the sentence weight is what
    makes them comparable across a document; the square root keeps the key word of a
    low-weight sentence visible instead of fading it out. The report then divides every shade
    by the largest shade in its document, so each document uses the whole colour scale (shades
    are comparable within a document, not across documents).
    """
    return math.sqrt(max(float(sentence_weight), 0.0)) * max(float(word_weight), 0.0)


def _is_word(token: str) -> bool:
    """False for tokens with no letter or digit ('.', '``', '--', '$'), which only add noise to the word lists."""
    return any(ch.isalnum() for ch in token)


def members(value: str | list[str] | None) -> list[str]:
    """A ``label``/``predicted`` value as a list: a single label, a multi-label set, or none."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _class_order(explanations: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """The given labels, then any predicted label they lack (in order of appearance), so nothing is dropped."""
    order = list(labels)
    for explanation in explanations:
        for label in members(explanation["predicted"]):
            if label not in order:
                order.append(label)
    return order


def class_summary(explanations: list[dict[str, Any]], labels: list[str], top_n: int = 15) -> dict[str, Any]:
    """Per predicted class: ``documents``, ``top_words`` and ``top_sentences``.

    ``top_words``: tokens ranked by their total attention mass, Σ sentence weight × word weight
    over the class's documents (a word's share of the document's attention), with that mass and
    how often the token occurs; punctuation-only tokens are skipped. ``top_sentences``: the
    highest-weighted sentences with their document id, each distinct text once (boilerplate
    repeated across documents would otherwise fill the list). Sentences of one-sentence documents
    are left out of it: their weight is 1 by construction, which says nothing about attention. A multi-label
    document counts for each label predicted for it.
    """
    classes = _class_order(explanations, labels)
    mass: dict[str, dict[str, float]] = {label: defaultdict(float) for label in classes}
    count: dict[str, dict[str, int]] = {label: defaultdict(int) for label in classes}
    best: dict[str, dict[str, tuple[float, str]]] = {label: {} for label in classes}
    documents = dict.fromkeys(classes, 0)
    for explanation in explanations:
        for label in members(explanation["predicted"]):
            documents[label] += 1
            sentences = explanation["sentences"]
            for sentence in sentences:
                weight = float(sentence["weight"])
                for token, word_weight in sentence["words"]:
                    if _is_word(token):
                        mass[label][token] += weight * float(word_weight)
                        count[label][token] += 1
                seen = best[label].get(sentence["text"])
                if len(sentences) > 1 and (seen is None or weight > seen[0]):
                    best[label][sentence["text"]] = (weight, str(explanation["id"]))
    summary: dict[str, Any] = {}
    for label in classes:
        words = sorted(mass[label].items(), key=lambda item: (-item[1], item[0]))[:top_n]
        sentences_ranked = sorted(best[label].items(), key=lambda item: (-item[1][0], item[0]))[:top_n]
        summary[label] = {
            "documents": documents[label],
            "top_words": [{"word": word, "mass": round(m, 6), "count": count[label][word]} for word, m in words],
            "top_sentences": [{"text": text, "weight": round(w, 6), "id": doc_id}
                              for text, (w, doc_id) in sentences_ranked],
        }
    return summary


# --------------------------------------------------------------------------- HTML pieces
def _esc(value: Any) -> str:
    """Every piece of data goes through here: text and attribute values alike (quotes escaped too)."""
    return html.escape(str(value), quote=True)


def _fraction(value: float) -> str:
    """A 0..1 value in two decimals without the leading zero ('.42', '1', '0'): per-word bytes add up."""
    text = f"{min(max(value, 0.0), 1.0):.2f}".rstrip("0").rstrip(".")
    return text[1:] if text.startswith("0.") else text


def _options(values: list[str], *, all_label: str = "all") -> str:
    """Select options; the first one means 'all' by position (the JS checks selectedIndex), so no label can collide."""
    return f"<option>{_esc(all_label)}</option>" + "".join(
        f'<option value="{_esc(v)}">{_esc(v) if v else "(unknown)"}</option>' for v in values)


def _head(explanation: dict[str, Any]) -> str:
    """Id, true and predicted label, correct/incorrect badge and a truncation mark."""
    correct = explanation.get("correct")
    parts = [f"<b>{_esc(explanation['id'])}</b>"]
    if explanation.get("label") is not None:
        parts.append(f"<span>true: <b>{_esc(', '.join(members(explanation['label'])))}</b></span>")
    parts.append(f"<span>predicted: <b>{_esc(', '.join(members(explanation['predicted'])) or '(none)')}</b> "
                 f"({float(explanation['confidence']):.3f})</span>")
    for label, evidence in (explanation.get("label_evidence") or {}).items():
        parts.append(f'<span class="ev">{_esc(label)}: sentence {evidence["sentence"] + 1} '
                     f'(without it p falls {evidence["drop"]:.3f})</span>')
    if correct is not None:
        parts.append(f'<span class="badge">{"correct" if correct else "incorrect"}</span>')
    if explanation.get("truncated"):
        parts.append('<span class="trunc">truncated: only what the model read is shown</span>')
    return '<div class="head">' + "".join(parts) + "</div>"


def _probabilities(explanation: dict[str, Any], labels: list[str]) -> str:
    """One small bar per class, in the fixed label order so that documents compare at a glance."""
    probabilities = explanation["probabilities"]
    order = [label for label in labels if label in probabilities] + [p for p in probabilities if p not in labels]
    spans = []
    for label in order:
        p = float(probabilities[label])
        top = ' class="top"' if label in members(explanation["predicted"]) else ""
        spans.append(f'<span{top}>{_esc(label)}<span class="pb" style="--w:{_fraction(p)}"></span>{p:.3f}</span>')
    return '<div class="probs">' + "".join(spans) + "</div>"


def _sentence(sentence: dict[str, Any], top_shade: float, top_weight: float) -> str:
    """A row: the red weight bar (length relative to the document's top sentence), the weight, the sentence.

    The sentence as written is what a reader recognises, so it is what shows; the model's tokens
    shaded by word attention come before it, displayed only with the 'tokens with word attention'
    toggle (the text then stays below them, smaller). A word's tooltip is its weight within the
    sentence; words whose shade rounds to 0 carry no style at all.
    """
    weight = float(sentence["weight"])
    words = []
    for token, word_weight in sentence["words"]:
        alpha = _fraction(shade(weight, word_weight) / top_shade)
        style = f' style="--a:{alpha}"' if alpha != "0" else ""
        words.append(f'<span{style} title="{float(word_weight):.3f}">{_esc(token)}</span>')
    return (f'<div class="s"><span class="sb" style="--w:{_fraction(weight / top_weight)}"></span>'
            f'<span class="sn">{weight:.3f}</span><div class="c"><span class="t">{" ".join(words)}</span>'
            f'<span class="o">{_esc(sentence["text"])}</span></div></div>')


def _document(index: int, explanation: dict[str, Any], labels: list[str]) -> str:
    """One document as a ``<section>`` whose data-* attributes are what the filters read."""
    correct = explanation.get("correct")
    sentences = explanation["sentences"]
    top_shade = max((shade(s["weight"], w) for s in sentences for _, w in s["words"]), default=0.0) or 1.0
    top_weight = max((float(s["weight"]) for s in sentences), default=0.0) or 1.0
    state = {True: "", False: " wrong", None: " unknown"}[correct]
    label, predicted = explanation.get("label"), explanation["predicted"]
    multi = isinstance(predicted, list)  # a multi-label document: the filters read JSON lists

    def shown(value) -> str:
        return json.dumps(members(value)) if multi else ("" if value is None else value)

    flag = ' data-multi="1"' if multi else ""
    opening = (f'<section class="doc{state}" id="doc-{index}"{flag} '
               f'data-predicted="{_esc(shown(predicted))}" data-label="{_esc(shown(label))}" '
               f'data-correct="{"" if correct is None else str(bool(correct)).lower()}" '
               f'data-confidence="{float(explanation["confidence"]):.4f}">')
    rows = "".join(_sentence(s, top_shade, top_weight) for s in sentences)
    return opening + _head(explanation) + _probabilities(explanation, labels) + rows + "</section>"


def _counts(explanations: list[dict[str, Any]], classes: list[str]) -> str:
    """Documents, per predicted class, and accuracy where the true label is known."""
    predicted = {label: sum(label in members(e["predicted"]) for e in explanations) for label in classes}
    known = [e["correct"] for e in explanations if e.get("correct") is not None]
    parts = [f"{len(explanations):,} documents", "predicted: " + ", ".join(
        f"{_esc(label)} {n:,}" for label, n in predicted.items() if n)]
    if known:
        parts.append(f"correct: {sum(known):,} of {len(known):,} with a known label ({sum(known) / len(known):.1%})")
    return '<p class="counts">' + " · ".join(parts) + "</p>"


def _filters(classes: list[str], true_labels: list[str], documents: int) -> str:
    """The filter bar; element ids are the JavaScript's (and the tests') contract. The count is right without JS too."""
    return (
        '<div class="filters">'
        f'<label>predicted <select id="f-predicted">{_options(classes)}</select></label>'
        f'<label>true <select id="f-true">{_options(true_labels)}</select></label>'
        '<label>result <select id="f-correct"><option>all</option><option value="true">correct</option>'
        '<option value="false">incorrect</option></select></label>'
        '<label>confidence ≥ <input id="f-confidence" type="range" min="0" max="1" step="0.01" value="0"> '
        '<span id="f-confidence-value">0.00</span></label>'
        '<label><input id="f-tokens" type="checkbox"> show tokens with word attention</label>'
        f'<span id="f-count">{documents} of {documents} documents shown</span></div>'
    )


def _summary_section(summary: dict[str, Any], anchors: dict[str, int]) -> str:
    """Per class: top words with their attention mass, top sentences linking to their document when it is shown."""
    rows = ['<section class="summary" id="summary"><h2>What each class attends to</h2><table><tr><th>class</th>'
            "<th>documents</th><th>words with the most attention mass (occurrences)</th>"
            "<th>highest-weighted sentences</th></tr>"]
    for index, (label, info) in enumerate(summary.items()):
        words = ", ".join(f'{_esc(w["word"])} <small>{float(w["mass"]):.2f} ({w["count"]})</small>'
                          for w in info["top_words"])
        items = []
        for s in info["top_sentences"]:
            doc = _esc(s["id"])
            if str(s["id"]) in anchors:
                doc = f'<a href="#doc-{anchors[str(s["id"])]}">{doc}</a>'
            items.append(f"<li>{float(s['weight']):.3f} {_esc(s['text'])} <small>({doc})</small></li>")
        rows.append(f'<tr id="summary-{index}"><td><b>{_esc(label)}</b></td><td>{int(info["documents"]):,}</td>'
                    f"<td>{words}</td><td><ol>{''.join(items)}</ol></td></tr>")
    rows.append("</table></section>")
    return "".join(rows)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Plots are drawn at 110-120 dpi; shown at 2/3 of their pixel size they read at a normal text size
# on an ordinary screen and stay sharp on a high-density one.
_FIGURE_SCALE = 2 / 3


def _png(path: str | Path) -> bytes | None:
    """The file's bytes when it is a PNG, else None: a missing or broken plot is left out, never a broken image."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return data if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR" else None


def _figures_section(figures: list[tuple[str, bytes]]) -> str:
    """The plots as inline ``data:`` images with their captions; width and height reserve their space up front."""
    items = []
    for caption, data in figures:
        width, height = (round(n * _FIGURE_SCALE) for n in struct.unpack(">II", data[16:24]))  # PNG's IHDR chunk
        source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        items.append(f'<figure style="width:{width}px"><img src="{source}" alt="{_esc(caption)}" width="{width}" '
                     f'height="{height}"><figcaption>{_esc(caption)}</figcaption></figure>')
    return '<section id="plots"><h2>Plots</h2><div class="figs">' + "".join(items) + "</div></section>"


def _contents(has_plots: bool, summary: dict[str, Any] | None, documents: int) -> str:
    """The table of contents: links to the plots, the per-class summary (and each class's row), the documents."""
    items = []
    if has_plots:
        items.append('<li><a href="#plots">Plots</a></li>')
    if summary:
        classes = " · ".join(f'<a href="#summary-{i}">{_esc(label)}</a>' for i, label in enumerate(summary))
        items.append(f'<li><a href="#summary">What each class attends to</a>: {classes}</li>')
    items.append(f'<li><a href="#documents">Documents</a> ({documents:,})</li>')
    return '<nav class="toc"><b>Contents</b><ol>' + "".join(items) + "</ol></nav>"


# --------------------------------------------------------------------------- the page
def render_html(explanations: list[dict[str, Any]], labels: list[str], *, title: str,
                summary: dict[str, Any] | None = None, notes: list[str] | None = None,
                figures: Sequence[tuple[str, str | Path]] = ()) -> str:
    """The whole report as one HTML5 string: title, notes and counts, contents, plots, the class summary, filters
    and every document.

    ``figures``: ``(caption, PNG path)`` pairs, embedded in the page; those whose file is missing
    (say, no evaluate stage before an explain of given texts) are left out.
    """
    classes = _class_order(explanations, labels)
    true_values = {label for e in explanations for label in (members(e.get("label")) or [None])}
    true_labels = [label for label in labels if label in true_values]
    true_labels += sorted(str(v) for v in true_values if v is not None and v not in labels)
    if None in true_values:
        true_labels.append("")
    anchors = {str(e["id"]): i for i, e in enumerate(explanations)}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_esc(note)}</li>" for note in notes) + "</ul>")
    plots = [(caption, data) for caption, path in figures if (data := _png(path)) is not None]
    parts += [_counts(explanations, classes), _contents(bool(plots), summary, len(explanations))]
    if plots:
        parts.append(_figures_section(plots))
    if summary:
        parts.append(_summary_section(summary, anchors))
    parts += [
        '<section id="documents"><h2>Documents</h2>',
        '<p class="legend">Each row is a sentence as written; the red bar is its attention weight (length relative to '
        "the document's top sentence; the number is the weight). <i>Show tokens with word attention</i> adds the "
        "model's tokens above each sentence, shaded by √(sentence weight) × word weight (Yang et al., 2016) and "
        "scaled to the document's darkest word; hover a token for its weight in its sentence.</p>",
        _filters(classes, true_labels, len(explanations)),
        *(_document(i, e, labels) for i, e in enumerate(explanations)),
        "</section>",
        f"<script>{_JS}</script>", "</body></html>",
    ]
    return "\n".join(parts)


def write_report(path: str | Path, explanations: list[dict[str, Any]], labels: list[str], **kwargs: Any) -> None:
    """``render_html`` to ``path`` (UTF-8); ``kwargs`` are ``render_html``'s (``title`` is required)."""
    Path(path).write_text(render_html(explanations, labels, **kwargs), encoding="utf-8")
