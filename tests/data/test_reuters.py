"""`make reuters` (pipeline.data.reuters): Reuters-21578's SGML to ModApte JSON Lines, on SGML as awkward as the real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data import reuters

HEADER = b'<!DOCTYPE lewis SYSTEM "lewis.dtd">\n'


def _story(newid: int, topics: list[str], text: bytes, lewis: str = "TRAIN", topics_attribute: str = "YES") -> bytes:
    """One <REUTERS> element laid out as the distributed files lay it out."""
    d = "".join(f"<D>{topic}</D>" for topic in topics).encode()
    return (
        f'<REUTERS TOPICS="{topics_attribute}" LEWISSPLIT="{lewis}" CGISPLIT="TRAINING-SET" OLDID="{5000 + newid}" '
        f'NEWID="{newid}">\n<DATE>26-FEB-1987 15:01:01.79</DATE>\n'.encode()
        + b"<TOPICS>" + d + b"</TOPICS>\n<PLACES><D>usa</D></PLACES>\n<PEOPLE></PEOPLE>\n<ORGS></ORGS>\n"
        b"<EXCHANGES></EXCHANGES>\n<COMPANIES></COMPANIES>\n<UNKNOWN> \n&#5;&#5;&#5;C T\n"
        b"&#22;&#22;&#1;f0704&#31;reute\nu f BC-STORY   02-26 0105</UNKNOWN>\n" + text + b"\n</REUTERS>\n"
    )


def _norm(title: bytes, body: bytes) -> bytes:
    return (b"<TEXT>&#2;\n<TITLE>" + title + b"</TITLE>\n<DATELINE>    NEW YORK, March 2 - </DATELINE><BODY>"
            + body + b"\n Reuter\n&#3;</BODY></TEXT>")


# Unescaped "&", entities, a raw \x03, a latin-1 byte, "^M", wrapped lines and indented paragraphs (table rows);
# four topics, one twice, one (wool) only ever on training stories.
AWKWARD = _norm(
    b"AT&T &amp; &lt;PRATT> SET Z\xdcRICH VENTURE",
    b"American Telephone and Telegraph Co &lt;T> and\n&lt;Pratt and Whitney> said they formed a joint venture in\n"
    b"Z\xfcrich.\x03\n    Shr 1.10 dlrs vs 90 cts^M\n    Net 5.0     mln vs 4.1 mln",
)
BRIEF = b'<TEXT TYPE="BRIEF">&#2;\n******<TITLE>ACME SEES HIGHER 1987 EARNINGS\n</TITLE>Blah blah blah.\n&#3;\n\n</TEXT>'
UNPROC = (b'<TEXT TYPE="UNPROC">&#2;\nFEDERAL RESERVE WEEKLY REPORT - FEB 26\n'
          b" Net free reserves.............644 vs.....1,337\n Bank borrowings...............680 vs.......425\n\n"
          b" Reuter\n&#3;\n\n</TEXT>")
PLAIN = _norm(b"WOOL PRICES FIRM", b"Wool prices were firm.")

SOURCE_FILES = {
    "reut2-000.sgm": HEADER
    + _story(1, ["earn", "wool", "acq", "earn"], AWKWARD)
    + _story(2, ["earn"], BRIEF, lewis="TEST")
    + _story(3, ["earn"], PLAIN, lewis="NOT-USED")
    + _story(4, ["wool"], PLAIN, lewis="TEST", topics_attribute="NO")  # has a topic, but TOPICS="NO": unused
    + _story(5, [], PLAIN)  # TOPICS="YES" yet <TOPICS></TOPICS>
    + _story(6, ["wool"], PLAIN),
    "reut2-001.sgm": HEADER
    + _story(7, ["acq"], UNPROC, lewis="TEST")
    + _story(8, ["earn"], b"<TEXT>&#2;\n&#3;</TEXT>", lewis="TEST")
    + _story(9, ["earn"], PLAIN, topics_attribute="BYPASS"),
}

TEXT_1 = ("AT&T & <PRATT> SET ZÜRICH VENTURE\n\nAmerican Telephone and Telegraph Co <T> and <Pratt and Whitney> said "
          "they formed a joint venture in Zürich.\n\nShr 1.10 dlrs vs 90 cts\n\nNet 5.0 mln vs 4.1 mln")
TEXT_7 = ("FEDERAL RESERVE WEEKLY REPORT - FEB 26\n\nNet free reserves.............644 vs.....1,337\n\n"
          "Bank borrowings...............680 vs.......425")
EXPECTED = [
    {"id": "reuters-1", "text": TEXT_1, "labels": ["acq", "earn"], "split": "train"},
    {"id": "reuters-2", "text": "ACME SEES HIGHER 1987 EARNINGS", "labels": ["earn"], "split": "test"},
    {"id": "reuters-7", "text": TEXT_7, "labels": ["acq"], "split": "test"},
]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "reuters21578"
    folder.mkdir()
    for name, data in SOURCE_FILES.items():
        (folder / name).write_bytes(data)
    (folder / "lewis.dtd").write_text("<!ELEMENT LEWIS O O (REUTERS+)>\n")
    return folder


def test_writes_the_modapte_stories_and_accounts_for_every_one(source, tmp_path):
    out = tmp_path / "out" / "modapte.jsonl"
    report = reuters.convert(source, out)
    assert out.read_text(encoding="utf-8").splitlines() == [json.dumps(r, ensure_ascii=False) for r in EXPECTED]
    assert report == {
        "source": str(source),
        "output": str(out),
        "categories_option": "modapte90",
        "stories_read": 9,
        "written": {"train": 1, "test": 2},
        "not_written": {"not_modapte": 3, "no_topics": 1, "no_kept_topics": 1, "empty_text": 1},
        "mean_words": {"train": 36.0, "test": 9.5},
        "categories": {"acq": {"train": 1, "test": 1}, "earn": {"train": 1, "test": 1}},
    }
    assert report["stories_read"] == sum(report["written"].values()) + sum(report["not_written"].values())
    assert json.loads(reuters.report_path(out).read_text(encoding="utf-8")) == report
    assert sorted(p.name for p in out.parent.iterdir()) == ["modapte.jsonl", "modapte.jsonl.report.json"]


def test_all_categories_keep_a_topic_seen_in_one_split_only(source, tmp_path):
    out = tmp_path / "all.jsonl"
    report = reuters.convert(source, out, categories="all")
    labels = {r["id"]: r["labels"] for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert labels == {"reuters-1": ["acq", "earn", "wool"], "reuters-2": ["earn"], "reuters-6": ["wool"],
                      "reuters-7": ["acq"]}
    assert report["not_written"] == {"not_modapte": 3, "no_topics": 1, "no_kept_topics": 0, "empty_text": 1}
    assert report["categories"]["wool"] == {"train": 2, "test": 0}


@pytest.mark.parametrize(("body", "text"), [
    (b"Prices rose.\n REUTER...", "Prices rose."),
    (b"Prices rose.\nreuter", "Prices rose."),
    (b"Prices rose.\n REUTERS", "Prices rose."),
    (b"total 55.8 (33.7).        REUTER", "total 55.8 (33.7)."),
    (b"SAO SIMAO NIL. REUTER11:43/VB", "SAO SIMAO NIL."),
    (b"Note: period ended February 28.\nREUTER\n Reuter", "Note: period ended February 28."),
    (b"a treasurer told\nReuters.", "a treasurer told Reuters."),  # a sentence's last word, not a signature
])
def test_the_signature_goes_and_a_sentence_ending_in_reuters_stays(body, text):
    content = b"<TEXT>&#2;\n<BODY>" + body + b"\n&#3;</BODY></TEXT>"
    assert reuters.story_text(content.decode("latin-1")) == text


def test_main_writes_to_the_artifacts_folder_by_default(source, tmp_path, capsys):
    assert reuters.main(["--source", str(source)]) == 0
    out = tmp_path / "artifacts" / "data" / "reuters-modapte.jsonl"  # HAN_ARTIFACTS_DIR is tmp_path/artifacts here
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3
    printed = capsys.readouterr().out
    assert f"read 9 stories from {source}" in printed
    assert f"wrote 1 train + 2 test stories in 2 categories to {out}" in printed
    assert "not written: not_modapte 3, no_topics 1, no_kept_topics 1, empty_text 1" in printed


def test_main_says_what_to_do_when_the_source_is_missing(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert reuters.main(["--source", str(missing), "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"the Reuters-21578 folder {missing} does not exist" in err and "--source DIR" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_main_says_what_to_do_when_the_folder_has_no_sgml(tmp_path, capsys):
    assert reuters.main(["--source", str(tmp_path), "--out", str(tmp_path / "out.jsonl")]) == 2
    assert f"{tmp_path} holds no reut2-*.sgm files" in capsys.readouterr().err


def test_a_truncated_file_is_refused_and_the_old_output_kept(source, tmp_path):
    out = tmp_path / "modapte.jsonl"
    out.write_text("old\n")
    (source / "reut2-001.sgm").write_bytes(SOURCE_FILES["reut2-001.sgm"][:-200])
    with pytest.raises(reuters.ReutersError, match=r"reut2-001\.sgm: 3 <REUTERS> elements start but 2 end"):
        reuters.convert(source, out)
    assert out.read_text() == "old\n"


@pytest.mark.real_data
def test_real_reuters_gives_the_modapte_90_category_split(shared_data, tmp_path):
    out = tmp_path / "modapte.jsonl"
    report = reuters.convert(shared_data / "reuters21578", out)
    assert report["stories_read"] == 21_578
    # NLTK's ApteMod has 7,769 training stories: one fewer labelled trade alone (its single-label trade stories
    # number 250 in training, these 251); which one is not documented. Its 3,019 test stories and 90 topics match.
    assert report["written"] == {"train": 7_770, "test": 3_019}
    # no_topics: TOPICS="YES" stories without a <D> (1,828 train, 280 test); no_kept_topics: 5 training stories
    # whose only topics never label a test story.
    assert report["not_written"] == {"not_modapte": 8_676, "no_topics": 2_108, "no_kept_topics": 5, "empty_text": 0}
    assert len(report["categories"]) == 90
    assert list(report["categories"].items())[:3] == [
        ("earn", {"train": 2_877, "test": 1_087}), ("acq", {"train": 1_650, "test": 719}),
        ("money-fx", {"train": 538, "test": 179}),
    ]
    with out.open(encoding="utf-8") as lines:
        first = json.loads(next(lines))
    assert first["id"] == "reuters-1" and first["labels"] == ["cocoa"] and first["split"] == "train"
    assert first["text"].startswith("BAHIA COCOA REVIEW\n\nShowers continued throughout the week in the Bahia cocoa")
    assert first["text"].endswith("after carnival which ends midday on February 27.")  # signature gone
