"""The HTML report: well-formed, every sentence present and escaped, working filters, offline; the class summary."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from pipeline.report import class_summary, render_html, shade, write_report

VOID = {"meta", "input", "br", "img", "link", "hr", "wbr"}
LABELS = ["a", "b"]


class Page(HTMLParser):
    """Checks nesting as it goes and keeps what the tests look at: text, ids, elements with their attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.script = ""

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-5:]}"
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "script":
            self.script += data
        else:
            self.text.append(data)

    def ids(self) -> dict[str, tuple[str, dict]]:
        return {a["id"]: (tag, a) for tag, a in self.elements if "id" in a}

    def documents(self) -> list[dict]:
        return [a for tag, a in self.elements if tag == "section" and "doc" in (a.get("class") or "").split()]


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed: {parser.stack}"
    return parser


def explanation(doc_id, label, predicted, confidence, sentences):
    other = next(x for x in LABELS if x != predicted)
    return {"id": doc_id, "label": label, "predicted": predicted,
            "probabilities": {predicted: confidence, other: round(1 - confidence, 6)},
            "confidence": confidence, "correct": None if label is None else label == predicted, "truncated": False,
            "sentences": [{"text": text, "weight": w, "words": words} for text, w, words in sentences]}


NASTY = 'Risky <b>bold</b> & "quoted" \'it\'s\'.'
DOCS = [
    explanation('d"1<', "a", "a", 0.9, [
        (NASTY, 0.8, [["risky", 0.2], ["<b>bold</b>", 0.45], ["&", 0.35]]),
        ("Calm day.", 0.2, [["calm", 0.6], ["day", 0.3], [".", 0.1]]),
    ]),
    explanation("d2", "b", "a", 0.6, [("Goal scored!", 0.7, [["goal", 0.9], ["!", 0.1]]),
                                      ("Then rain.", 0.3, [["then", 0.5], ["rain", 0.5]])]),
    explanation("d3", "b", "b", 0.75, [("Only one sentence.", 1.0, [["only", 0.2], ["one", 0.3], ["sentence", 0.5]])]),
    explanation("d4", None, "b", 0.55, [("No label here.", 1.0, [["no", 0.4], ["label", 0.4], ["here", 0.2]])]),
]


def test_page_is_well_formed_and_holds_every_sentence_escaped():
    page = render_html(DOCS, LABELS, title="t <x>", notes=["accuracy 0.5 <ok>"])
    parsed = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    text = "".join(parsed.text)
    for d in DOCS:
        for sentence in d["sentences"]:
            assert sentence["text"] in text  # as text, not markup ...
            assert html.escape(sentence["text"]) in page  # ... because it was escaped
            for token, _ in sentence["words"]:
                assert token in text
    assert "<b>bold" not in page and "<x>" not in page and "<ok>" not in page
    assert "t <x>" in text and "accuracy 0.5 <ok>" in text


def test_documents_carry_their_filter_data_and_labels():
    parsed = parse(render_html(DOCS, LABELS, title="t"))
    documents = parsed.documents()
    assert [d["data-predicted"] for d in documents] == ["a", "a", "b", "b"]
    assert [d["data-label"] for d in documents] == ["a", "b", "b", ""]
    assert [d["data-correct"] for d in documents] == ["true", "false", "true", ""]
    assert [float(d["data-confidence"]) for d in documents] == [0.9, 0.6, 0.75, 0.55]
    text = "".join(parsed.text)
    assert 'd"1<' in text and "incorrect" in text  # the id survives escaping; the badge


def test_filters_exist_and_nothing_is_fetched_from_outside():
    page = render_html(DOCS, LABELS, title="t")
    ids = parse(page).ids()
    for name in ("f-predicted", "f-true", "f-correct"):
        assert ids[name][0] == "select"
    tag, attrs = ids["f-confidence"]
    assert tag == "input" and (attrs["type"], attrs["min"], attrs["max"]) == ("range", "0", "1")
    assert ids["f-count"][0] == "span"
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", page)


def test_words_are_shaded_by_the_normalised_shade_with_the_weight_as_tooltip():
    parsed = parse(render_html(DOCS[:1], LABELS, title="t"))
    words = {}
    for tag, attrs in parsed.elements:
        if tag == "span" and "title" in attrs and attrs["title"].replace(".", "").isdigit():
            words[len(words)] = attrs
    top = shade(0.8, 0.45)  # "<b>bold</b>": the darkest word of the document
    expected = [shade(0.8, 0.2), top, shade(0.8, 0.35), shade(0.2, 0.6), shade(0.2, 0.3), shade(0.2, 0.1)]
    assert [attrs["title"] for attrs in words.values()] == ["0.200", "0.450", "0.350", "0.600", "0.300", "0.100"]
    alphas = [float(re.fullmatch(r"--a:([.\d]+)", attrs.get("style", "--a:0")).group(1)) for attrs in words.values()]
    assert alphas == pytest.approx([s / top for s in expected], abs=0.006)
    assert alphas[1] == 1.0


def test_filters_work_when_the_script_runs():
    """Runs the page's own script in Node against a minimal DOM built from the parsed page."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    parsed = parse(render_html(DOCS, LABELS, title="t"))
    dataset = [{k[5:]: v for k, v in d.items() if k.startswith("data-")} for d in parsed.documents()]
    harness = """
const docs = DATA.map(d => ({dataset: d, hidden: false}));
const els = {};
for (const id of ['f-predicted', 'f-true', 'f-correct', 'f-confidence', 'f-confidence-value', 'f-count', 'f-raw'])
  els[id] = {id, value: '', selectedIndex: 0, textContent: '', on: {}, addEventListener(t, f) { this.on[t] = f; }};
els['f-confidence'].value = '0';
globalThis.document = {getElementById: id => els[id], querySelectorAll: () => docs,
                       body: {classList: {toggle() {}}}};
SCRIPT
const out = [];
function set(id, index, value) {
  Object.assign(els[id], {selectedIndex: index, value});
  els[id].on.input.call(els[id]);
  out.push([els['f-count'].textContent, docs.map(d => !d.hidden)]);
}
set('f-predicted', 1, 'a');
set('f-predicted', 0, 'all');
set('f-correct', 2, 'false');
set('f-correct', 0, 'all');
set('f-true', 3, '');
set('f-true', 0, 'all');
set('f-confidence', 0, '0.7');
console.log(JSON.stringify(out));
""".replace("DATA", json.dumps(dataset)).replace("SCRIPT", parsed.script)
    run = subprocess.run([node, "-e", harness], capture_output=True, text=True, timeout=60, check=True)
    states = json.loads(run.stdout)
    assert states == [
        ["2 of 4 documents shown", [True, True, False, False]],  # predicted a
        ["4 of 4 documents shown", [True, True, True, True]],
        ["1 of 4 documents shown", [False, True, False, False]],  # incorrect
        ["4 of 4 documents shown", [True, True, True, True]],
        ["1 of 4 documents shown", [False, False, False, True]],  # true label unknown
        ["4 of 4 documents shown", [True, True, True, True]],
        ["2 of 4 documents shown", [True, False, True, False]],  # confidence >= 0.7
    ]


def test_true_label_options_follow_the_labels_and_include_unknown():
    page = render_html(DOCS, LABELS, title="t")
    select = page.split('id="f-true">', 1)[1].split("</select>", 1)[0]
    assert re.findall(r"<option[^>]*>([^<]*)</option>", select) == ["all", "a", "b", "(unknown)"]


def test_shade_is_root_sentence_weight_times_word_weight():
    assert shade(0.25, 0.4) == pytest.approx(math.sqrt(0.25) * 0.4)
    assert shade(0.01, 1.0) == pytest.approx(0.1)  # a key word in a 1% sentence still shows at 10%
    assert shade(0.0, 1.0) == 0.0


def test_class_summary_ranks_by_attention_mass_and_skips_punctuation():
    summary = class_summary(DOCS, LABELS, top_n=3)
    a_words = summary["a"]["top_words"]
    # goal 0.7 x 0.9 = .63, <b>bold</b> 0.8 x 0.45 = .36, risky .16; "&" (.28) and "!" (.07) are punctuation
    assert [w["word"] for w in a_words] == ["goal", "<b>bold</b>", "risky"]
    assert a_words[0] == {"word": "goal", "mass": pytest.approx(0.63), "count": 1}
    assert summary["a"]["documents"] == 2 and summary["b"]["documents"] == 2
    assert [s["text"] for s in summary["a"]["top_sentences"]] == [NASTY, "Goal scored!", "Then rain."]
    assert summary["a"]["top_sentences"][0]["id"] == 'd"1<'
    assert summary["b"]["top_sentences"] == []  # one-sentence documents: weight 1 by construction
    assert [w["word"] for w in summary["b"]["top_words"]] == ["sentence", "label", "no"]  # ties by word


def test_class_summary_sums_mass_over_documents():
    repeated = [explanation(f"r{i}", "a", "a", 0.9, [("x y", 0.5, [["x", 0.5], ["y", 0.5]]),
                                                     ("z", 0.5, [["z", 1.0]])]) for i in range(3)]
    summary = class_summary(repeated, LABELS)
    assert summary["a"]["top_words"][0] == {"word": "z", "mass": pytest.approx(1.5), "count": 3}
    assert len(summary["a"]["top_sentences"]) == 2  # identical texts once each


def test_summary_is_rendered_and_links_to_shown_documents(tmp_path):
    path = tmp_path / "report.html"
    summary = class_summary(DOCS, LABELS)
    write_report(path, DOCS[1:], LABELS, title="t", summary=summary)  # d"1< summarised but not shown
    page = path.read_text(encoding="utf-8")
    parsed = parse(page)
    links = [a["href"] for tag, a in parsed.elements if tag == "a"]
    assert links == ["#doc-0", "#doc-0"]  # d2's two sentences; d"1< has no anchor
    assert {link[1:] for link in links} <= set(parsed.ids())
    assert "goal" in "".join(parsed.text) and html.escape(NASTY) in page
