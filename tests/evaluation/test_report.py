"""The HTML report: well-formed, every sentence present and escaped, working filters, offline; the class summary,
the embedded plots, the table of contents, original sentences shown and tokens on request."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import pytest

from pipeline.evaluation.metrics import write_confusion_matrix
from pipeline.evaluation.report import class_summary, render_html, shade, write_report

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
for (const id of ['f-predicted', 'f-true', 'f-correct', 'f-confidence', 'f-confidence-value', 'f-count', 'f-tokens'])
  els[id] = {id, value: '', selectedIndex: 0, textContent: '', checked: false, on: {},
             addEventListener(t, f) { this.on[t] = f; }};
els['f-confidence'].value = '0';
const classes = new Set();
globalThis.document = {getElementById: id => els[id], querySelectorAll: () => docs,
                       body: {classList: {toggle(name, on) { if (on) classes.add(name); else classes.delete(name); }}}};
SCRIPT
const tokens = [[...classes]];
for (const checked of [true, false]) {
  els['f-tokens'].checked = checked;
  els['f-tokens'].on.change.call(els['f-tokens']);
  tokens.push([...classes]);
}
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
console.log(JSON.stringify({out, tokens}));
""".replace("DATA", json.dumps(dataset)).replace("SCRIPT", parsed.script)
    run = subprocess.run([node, "-e", harness], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(run.stdout)
    assert result["tokens"] == [[], ["showtokens"], []]  # the token toggle: off on load, on, off again
    states = result["out"]
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
    links = [a["href"] for tag, a in parsed.elements if tag == "a" and a["href"].startswith("#doc-")]
    assert links == ["#doc-0", "#doc-0"]  # d2's two sentences; d"1< has no anchor
    assert {link[1:] for link in links} <= set(parsed.ids())
    assert "goal" in "".join(parsed.text) and html.escape(NASTY) in page


# --------------------------------------------------------------------------- plots, contents, sentences
def confusion_png(tmp_path, name="cm.png"):
    """A real plot, drawn the way the evaluate stage draws it."""
    path = tmp_path / name
    write_confusion_matrix([[3, 1], [0, 4]], LABELS, path, tmp_path / f"{name}.csv", title="t")
    return path


def images(parsed: Page) -> list[dict]:
    return [attrs for tag, attrs in parsed.elements if tag == "img"]


def test_plots_are_embedded_as_data_uris_and_missing_ones_left_out(tmp_path):
    png = confusion_png(tmp_path)
    not_png = tmp_path / "empty.png"
    not_png.write_bytes(b"")  # a plot whose write was cut short
    figures = [("gone <x>", tmp_path / "missing.png"), ("matrix <x>", png), ("cut", not_png)]
    page = render_html(DOCS, LABELS, title="t", figures=figures)
    parsed = parse(page)
    [img] = images(parsed)
    data = png.read_bytes()
    assert img["src"] == "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    assert img["alt"] == "matrix <x>" and "matrix <x>" in "".join(parsed.text) and "<x>" not in page
    width, height = struct.unpack(">II", data[16:24])
    assert int(img["width"]) / int(img["height"]) == pytest.approx(width / height, rel=0.01)
    assert parsed.ids()["plots"][0] == "section"
    assert "gone" not in page and "cut" not in "".join(parsed.text)
    # every resource is inline: the only src is the data URI
    assert re.findall(r"\bsrc=\"([^\"]{0,22})", page) == ["data:image/png;base64,"]
    assert "http://" not in page and "https://" not in page


def test_without_plots_there_is_no_image_and_no_plots_section(tmp_path):
    for figures in ((), [("gone", tmp_path / "missing.png")]):
        page = render_html(DOCS, LABELS, title="t", figures=figures)
        parsed = parse(page)
        assert images(parsed) == [] and "plots" not in parsed.ids() and 'href="#plots"' not in page
        assert not re.search(r"<img\b|\bsrc=", page)


def test_contents_links_resolve_to_the_plots_the_summary_its_classes_and_the_documents(tmp_path):
    page = render_html(DOCS, LABELS, title="t", summary=class_summary(DOCS, LABELS),
                       figures=[("matrix", confusion_png(tmp_path))])
    parsed = parse(page)
    ids = parsed.ids()
    contents = page.split('<nav class="toc">', 1)[1].split("</nav>", 1)[0]
    assert page.index('<nav class="toc">') < page.index('id="plots"') < page.index('id="summary"') \
        < page.index('id="documents"') < page.index('id="doc-0"')
    targets = re.findall(r'href="#([^"]+)"', contents)
    assert targets == ["plots", "summary", "summary-0", "summary-1", "documents"]
    assert [ids[t][0] for t in targets] == ["section", "section", "tr", "tr", "section"]
    labels_in_rows = [re.search(rf'id="{t}"><td><b>([^<]*)</b>', page).group(1) for t in targets[2:4]]
    assert labels_in_rows == LABELS
    every = {a["href"][1:] for tag, a in parsed.elements if tag == "a" and a.get("href", "").startswith("#")}
    assert every <= set(ids)  # no link on the page points nowhere
    bare = parse(render_html(DOCS, LABELS, title="t"))  # no summary, no plots: only the documents
    assert [a["href"] for tag, a in bare.elements if tag == "a"] == ["#documents"]


class Styled(Page):
    """A Page that also keeps, for every element, its own selector keys and its ancestors' (outermost first)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[set[str]] = []
        self.placed: list[tuple[set[str], list[set[str]]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        keys = {tag, *(f".{c}" for c in (attrs.get("class") or "").split()), *(f"[{a}]" for a in attrs)}
        self.placed.append((keys, list(self.keys)))
        if tag not in VOID:
            self.keys.append(keys)
        super().handle_starttag(tag, attrs.items())

    def handle_endtag(self, tag):
        super().handle_endtag(tag)
        self.keys.pop()

    def having(self, cls: str) -> list[tuple[set[str], list[set[str]]]]:
        return [(keys, above) for keys, above in self.placed if f".{cls}" in keys]


def display_rules(page: str) -> list[tuple[list[set[str]], str, tuple]]:
    """The page's CSS rules that set ``display``: (compound selectors, value, precedence), descendant selectors only."""
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    rules = []
    for order, (selectors, body) in enumerate(re.findall(r"([^{}]+)\{([^}]*)\}", css)):
        found = re.search(r"(?:^|;)\s*display\s*:\s*([^;!]+?)\s*(!important)?\s*(?:;|$)", body)
        if not found:
            continue
        for selector in selectors.split(","):
            parts = selector.split()
            assert all(re.fullmatch(r"[a-z0-9]*(?:\.[\w-]+|\[[\w-]+\])*", p) for p in parts), \
                f"this check only understands descendant selectors, not {selector!r}"
            compounds = [set(re.findall(r"^[a-z][a-z0-9]*|\.[\w-]+|\[[\w-]+\]", p)) for p in parts]
            classes = sum(len([k for k in c if k[0] in ".["]) for c in compounds)
            tags = sum(len([k for k in c if k[0] not in ".["]) for c in compounds)
            rules.append((compounds, found.group(1), (bool(found.group(2)), classes, tags, order)))
    return rules


def display(keys: set[str], above: list[set[str]], rules) -> str:
    """The cascade's ``display`` for one element (the winner by importance, specificity and order)."""
    def matches(compounds):
        if not compounds[-1] <= keys:
            return False
        remaining = list(compounds[:-1])
        for ancestor in reversed(above):
            if remaining and remaining[-1] <= ancestor:
                remaining.pop()
        return not remaining
    winners = sorted((precedence, value) for compounds, value, precedence in rules if matches(compounds))
    return winners[-1][1] if winners else "initial"


def shown(keys, above, rules, body_classes=()) -> bool:
    above = [k | {f".{c}" for c in body_classes} if "body" in k else k for k in above]
    chain = [(k, above[:i]) for i, k in enumerate(above)] + [(keys, above)]
    return all(display(k, a, rules) != "none" for k, a in chain)


def test_original_sentences_show_by_default_and_tokens_only_with_the_toggle():
    page = render_html(DOCS, LABELS, title="t")
    parsed = Styled()
    parsed.feed(page)
    rules = display_rules(page)
    assert re.findall(r'<span class="o">([^<]*)</span>', page) == [
        html.escape(s["text"]) for d in DOCS for s in d["sentences"]]
    originals, tokens, bars = parsed.having("o"), parsed.having("t"), parsed.having("sb")
    assert len(originals) == len(tokens) == len(bars) == 6
    for keys, above in originals + bars:
        assert shown(keys, above, rules) and shown(keys, above, rules, ["showtokens"])
    for keys, above in tokens:
        assert not shown(keys, above, rules) and shown(keys, above, rules, ["showtokens"])
    toggle = parsed.ids()["f-tokens"][1]
    assert toggle["type"] == "checkbox" and "checked" not in toggle
    assert "show tokens with word attention" in "".join(parsed.text)


def test_the_browser_shows_original_sentences_and_tokens_on_request(tmp_path):
    """The same in a real browser: computed visibility before and after clicking the toggle."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if browser is None:
        pytest.skip("no headless browser installed")
    probe = """<script>
function state(){return ['o','t','sb'].map(function(c){return document.querySelector('#doc-1 .'+c).checkVisibility();});}
var before=state();document.getElementById('f-tokens').click();
document.body.insertAdjacentHTML('beforeend','<pre id="pro'+'be">'+JSON.stringify([before,state()])+'</pre>');
</script></body>"""
    path = tmp_path / "report.html"
    path.write_text(render_html(DOCS, LABELS, title="t").replace("</body>", probe), encoding="utf-8")
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True)
    before, after = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', run.stdout).group(1)))
    assert before == [True, False, True]  # original text and weight bar; no tokens
    assert after == [True, True, True]
