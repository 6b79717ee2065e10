"""Sentence splitting and word tokenization (pipeline.data.text), offline, on real BBC and IMDB text."""

from __future__ import annotations

import pickle
import socket
import tarfile

import nltk.data
import pytest
from nltk.tokenize import RegexpTokenizer, ToktokTokenizer, TreebankWordTokenizer
from nltk.tokenize.punkt import PunktSentenceTokenizer

from pipeline.config import PunktConfig
from pipeline.data import text as text_module
from pipeline.data.text import (
    REGEXP_PATTERN,
    TOKENIZER_KINDS,
    SentenceSplitter,
    TextProcessor,
    WordTokenizer,
    normalize_text,
)

EXTRA_ABBREVIATIONS = PunktConfig().extra_abbreviations
BBC_DOCS_PER_TOPIC = 60
IMDB_DOCS = 300


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bbc_texts(shared_data) -> list[str]:
    """300 normalized BBC articles (60 per topic); some files are not UTF-8."""
    texts = []
    for topic in ("business", "entertainment", "politics", "sport", "tech"):
        for path in sorted((shared_data / "bbc" / topic).glob("*.txt"))[:BBC_DOCS_PER_TOPIC]:
            texts.append(normalize_text(path.read_text(encoding="utf-8", errors="replace"), "NFKC"))
    assert len(texts) == 5 * BBC_DOCS_PER_TOPIC
    return texts


@pytest.fixture(scope="module")
def imdb_raw_texts(shared_data) -> list[str]:
    """The first 300 IMDB reviews in the archive (test split: it comes first), raw, with ``<br />``."""
    texts = []
    with tarfile.open(shared_data / "aclImdb.tar.gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".txt") and "/test/" in member.name:
                texts.append(archive.extractfile(member).read().decode("utf-8"))
                if len(texts) == IMDB_DOCS:
                    break
    assert sum("<br />" in t for t in texts) > 100
    return texts


@pytest.fixture(scope="module")
def splitter(bbc_texts) -> SentenceSplitter:
    """Punkt trained offline on BBC, plus the configured known abbreviations."""
    return SentenceSplitter.train(bbc_texts, EXTRA_ABBREVIATIONS)


@pytest.fixture(scope="module")
def bare_splitter(bbc_texts) -> SentenceSplitter:
    """Punkt trained offline on BBC only."""
    return SentenceSplitter.train(bbc_texts, [])


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def no_nltk_data(tmp_path, monkeypatch):
    """NLTK finds no data at all (an empty data path)."""
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    return empty


# --------------------------------------------------------------------------- normalize_text
def test_html_line_breaks_become_paragraph_breaks():
    raw = "Great film.<br /><br />Loved it<BR>the end<br/>and <br  />more <i>italic</i> text"
    assert normalize_text(raw, "NFC") == "Great film.\n\nLoved it\n\nthe end\n\nand\n\nmore italic text"


def test_normalize_collapses_spaces_and_keeps_other_angle_brackets():
    raw = "  a\t\t b  \r\n\r\n\r\n\r\n c <grin> <3  "
    assert normalize_text(raw, "none") == "a b\n\nc <grin> <3"


def test_unicode_normalization_forms():
    raw = "ﬁne cafe\u0301"  # "fi" ligature, e + combining acute
    assert normalize_text(raw, "NFKC") == "fine café"
    assert normalize_text(raw, "NFC") == "ﬁne café"
    assert normalize_text(raw, "none") == raw
    with pytest.raises(ValueError, match="NFKC"):
        normalize_text(raw, "NFD")


# --------------------------------------------------------------------------- sentence splitting
@pytest.mark.real_data
def test_known_abbreviations_stay_inside_sentences(splitter):
    assert splitter.split("He met Dr. Smith yesterday. The U.S. economy grew fast.") == [
        "He met Dr. Smith yesterday.",
        "The U.S. economy grew fast.",
    ]
    assert splitter.split("Mr. Blair met Mrs. Jones. It ended.") == ["Mr. Blair met Mrs. Jones.", "It ended."]


@pytest.mark.real_data
def test_bbc_alone_does_not_teach_us_abbreviations(bare_splitter):
    # Observed: BBC writes "Dr Smith" and "US", so Punkt trained on it alone breaks after
    # "Dr." and "U.S." (as ../shared/data/README.md reports). This is why the abbreviations
    # come from configuration.
    assert bare_splitter.split("He met Dr. Smith yesterday. The U.S. economy grew fast.") == [
        "He met Dr.",
        "Smith yesterday.",
        "The U.S.",
        "economy grew fast.",
    ]


def test_abbreviations_are_cleaned():
    trained = SentenceSplitter.train(["One sentence. Another one."], ["Dr.", " U.S ", "dr"])
    assert trained.extra_abbreviations == ["dr", "u.s"]
    assert {"dr", "u.s"} <= trained.params.abbrev_types
    with pytest.raises(TypeError, match="list of strings"):
        SentenceSplitter.train(["x."], "dr")
    with pytest.raises(ValueError, match="one word"):
        SentenceSplitter.train(["x."], ["e. g"])


def test_training_needs_documents():
    with pytest.raises(ValueError, match="no documents"):
        SentenceSplitter.train([], EXTRA_ABBREVIATIONS)


@pytest.mark.real_data
def test_paragraph_breaks_end_sentences(splitter):
    text = normalize_text("I loved it<br /><br />the acting was great<br /><br />  <br /><br />10/10", "NFKC")
    assert splitter.split(text) == ["I loved it", "the acting was great", "10/10"]


@pytest.mark.real_data
def test_br_is_never_a_token(splitter, imdb_raw_texts):
    for kind in TOKENIZER_KINDS:
        processor = TextProcessor(splitter, WordTokenizer(kind, lowercase=True), "NFKC")
        for raw in imdb_raw_texts:
            sentences, tokens = processor.sentences_and_tokens(raw)
            assert not any("<br" in s or "br />" in s for s in sentences)
            assert not any(t in ("br", "<br", "/>", "br/", "<br/>") for sentence in tokens for t in sentence), raw


@pytest.mark.real_data
def test_splitting_matches_nltk_punkt_on_real_text(splitter, bbc_texts, imdb_raw_texts):
    """Our untimed Punkt gives exactly NLTK's sentences for the same parameters."""
    reference = PunktSentenceTokenizer(splitter.params)
    for text in bbc_texts + [normalize_text(t, "NFKC") for t in imdb_raw_texts]:
        expected = [
            s.strip().replace("\n", " ")
            for paragraph in text.split("\n\n")
            for s in reference.tokenize(paragraph)
            if s.strip()
        ]
        assert splitter.split(text) == expected


@pytest.mark.real_data
def test_training_matches_nltk_trainer(bbc_texts):
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    trainer.train("\n\n".join(bbc_texts), finalize=False)  # 300 articles < one training chunk
    expected = trainer.get_params()
    ours = SentenceSplitter.train(bbc_texts, []).params
    assert ours.abbrev_types == expected.abbrev_types
    assert ours.collocations == expected.collocations
    assert ours.sent_starters == expected.sent_starters
    assert dict(ours.ortho_context) == {word: flags for word, flags in expected.ortho_context.items() if flags}


# --------------------------------------------------------------------------- persistence
@pytest.mark.real_data
def test_json_round_trip_splits_identically(splitter, bbc_texts, imdb_raw_texts, tmp_path):
    path = tmp_path / "splitter.json"
    splitter.save(path)
    loaded = SentenceSplitter.load(path)
    assert loaded.to_json() == splitter.to_json()
    assert loaded.origin == "trained" and loaded.training_documents == len(bbc_texts)
    texts = bbc_texts + [normalize_text(t, "NFKC") for t in imdb_raw_texts]
    assert [loaded.split(t) for t in texts] == [splitter.split(t) for t in texts]


@pytest.mark.real_data
def test_json_holds_parameters_and_counts(splitter):
    data = splitter.to_json()
    assert data["origin"] == "trained"
    assert set(EXTRA_ABBREVIATIONS) <= set(data["abbrev_types"])
    for field in ("abbrev_types", "collocations", "sent_starters", "ortho_context"):
        assert data["counts"][field] == len(data[field])


@pytest.mark.real_data
def test_splitting_does_not_change_the_parameters(bbc_texts):
    # NLTK's ortho_context is a defaultdict: each lookup of an unseen word would store it.
    fresh = SentenceSplitter.train(bbc_texts[:50], EXTRA_ABBREVIATIONS)
    before = fresh.to_json()
    size = len(fresh.params.ortho_context)
    fresh.split("Zyxwv met Qwerty. Plugh xyzzy frobnicated the U.S. Unseenword arrived.")
    assert fresh.to_json() == before
    assert len(fresh.params.ortho_context) == size


@pytest.mark.real_data
def test_corrupt_json_is_refused(splitter, tmp_path):
    data = splitter.to_json()
    with pytest.raises(ValueError, match="format"):
        SentenceSplitter.from_json({**data, "format": "something-else"})
    with pytest.raises(ValueError, match="version"):
        SentenceSplitter.from_json({**data, "version": 99})
    with pytest.raises(ValueError, match="sent_starters"):
        SentenceSplitter.from_json({k: v for k, v in data.items() if k != "sent_starters"})
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        SentenceSplitter.load(path)
    with pytest.raises(FileNotFoundError, match="run preprocessing"):
        SentenceSplitter.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------- installed Punkt data
def test_installed_never_touches_the_network(no_network):
    found = SentenceSplitter.installed(EXTRA_ABBREVIATIONS)
    if found is not None:  # this machine has punkt_tab installed
        assert found.origin == "installed"
        assert found.split("He met Dr. Smith yesterday. The U.S. economy grew fast.") == [
            "He met Dr. Smith yesterday.",
            "The U.S. economy grew fast.",
        ]


def test_installed_is_none_without_punkt_data(no_network, no_nltk_data):
    assert SentenceSplitter.installed(EXTRA_ABBREVIATIONS) is None


@pytest.mark.real_data
def test_installed_loads_punkt_tab_files(no_network, no_nltk_data, splitter):
    """A punkt_tab/english directory (as nltk.download would install it) is used, plus the extras."""
    model = no_nltk_data / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True)
    bare = splitter.params
    (model / "abbrev_types.txt").write_text("\n".join(sorted(bare.abbrev_types - {"dr", "u.s"})), encoding="utf-8")
    (model / "collocations.tab").write_text(
        "\n".join("\t".join(p) for p in sorted(bare.collocations)), encoding="utf-8"
    )
    (model / "sent_starters.txt").write_text("\n".join(sorted(bare.sent_starters)), encoding="utf-8")
    (model / "ortho_context.tab").write_text(
        "\n".join(f"{w}\t{f}" for w, f in sorted(bare.ortho_context.items())), encoding="utf-8"
    )
    installed = SentenceSplitter.installed(["dr", "u.s"])
    assert installed is not None and installed.origin == "installed"
    assert installed.split("He met Dr. Smith yesterday. The U.S. economy grew fast.") == [
        "He met Dr. Smith yesterday.",
        "The U.S. economy grew fast.",
    ]
    assert SentenceSplitter.from_json(installed.to_json()).to_json() == installed.to_json()


# --------------------------------------------------------------------------- word tokenization
SENTENCE = "Don't panic: the U.S. film (2004) isn't \"bad\" -- it's well-made."


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("treebank", "Do n't panic : the U.S. film ( 2004 ) is n't `` bad '' -- it 's well-made ."),
        ("toktok", "Don ' t panic : the U.S. film ( 2004 ) isn ' t \" bad \" -- it ' s well-made ."),
        ("regexp", "Don't panic : the U . S . film ( 2004 ) isn't \" bad \" - - it's well-made ."),
    ],
)
def test_tokenizers_need_no_nltk_data(kind, expected, no_network, no_nltk_data):
    expected = expected.split()
    assert WordTokenizer(kind, lowercase=False).tokenize(SENTENCE) == expected
    assert WordTokenizer(kind, lowercase=True).tokenize(SENTENCE) == [t.lower() for t in expected]


def test_unknown_tokenizer_is_refused():
    with pytest.raises(ValueError, match="treebank"):
        WordTokenizer("whitespace", lowercase=True)


TRICKY_SENTENCES = [
    "CANNOT, Gimme, gonna, WANNA go, lemme see, d'ye know, more'n that, gotta run.",
    "'Tis the season and 'twas fine; he said ''yes'' and \"no\"...",
    "Ca\u0301nnot gım\u0307me ǅonna \u212aelvin GIMME",  # non-ASCII case folding
    '"Quoted start" [brackets] {braces} <angles> a--b @home #tag $5 50% & co?! yes:no, 3,000',
    "Ends with quote.\" Then 'single' quotes' and O'Neil's rock'n'roll.",
    "",
    "   ",
]


@pytest.mark.real_data
def test_tokenizers_match_nltk_on_real_and_tricky_text(splitter, bbc_texts, imdb_raw_texts):
    """Our untimed rules give exactly NLTK's tokens."""
    sentences = [s for t in bbc_texts + [normalize_text(t, "NFKC") for t in imdb_raw_texts] for s in splitter.split(t)]
    sentences += TRICKY_SENTENCES
    references = {
        "treebank": TreebankWordTokenizer(),
        "toktok": ToktokTokenizer(),
        "regexp": RegexpTokenizer(REGEXP_PATTERN),
    }
    for kind, reference in references.items():
        ours = WordTokenizer(kind, lowercase=False)
        for sentence in sentences:
            assert ours.tokenize(sentence) == reference.tokenize(sentence), (kind, sentence)


def test_every_treebank_rule_has_a_shortcut():
    """If NLTK changes a Treebank pattern, its rule loses the shortcut (still correct, slower): notice it."""
    tokenizer = text_module._TreebankTokenizer
    rules = tokenizer._BEFORE_PADDING + tokenizer._ENDING_QUOTES + tokenizer._CONTRACTIONS
    assert [p.pattern for p, _, triggers in rules if triggers is None] == []


# --------------------------------------------------------------------------- TextProcessor
@pytest.fixture(scope="module")
def processor(splitter) -> TextProcessor:
    return TextProcessor(splitter, WordTokenizer("treebank", lowercase=True), "NFKC")


@pytest.mark.real_data
def test_process_gives_lowercased_sentences_of_tokens(processor):
    raw = "He met Dr. Smith yesterday.<br /><br />The U.S. economy grew fast!"
    assert processor.process(raw) == [
        ["he", "met", "dr.", "smith", "yesterday", "."],
        ["the", "u.s.", "economy", "grew", "fast", "!"],
    ]
    assert processor.process("") == []
    assert processor.process("<br /><br />  <br />") == []


@pytest.mark.real_data
def test_sentences_align_with_tokens(processor, imdb_raw_texts):
    for raw in imdb_raw_texts[:50]:
        sentences, tokens = processor.sentences_and_tokens(raw)
        assert len(sentences) == len(tokens) > 0
        assert tokens == processor.process(raw)
        assert tokens == [processor.tokenizer.tokenize(s) for s in sentences]


@pytest.mark.real_data
def test_processor_json_round_trip(processor, imdb_raw_texts, tmp_path):
    path = tmp_path / "text_processor.json"
    processor.save(path)
    loaded = TextProcessor.load(path)
    assert loaded.to_json() == processor.to_json()
    assert [loaded.process(t) for t in imdb_raw_texts] == [processor.process(t) for t in imdb_raw_texts]
    with pytest.raises(ValueError, match="format"):
        TextProcessor.from_json(processor.splitter.to_json())


@pytest.mark.real_data
def test_processor_pickles_for_worker_processes(processor, imdb_raw_texts):
    copy = pickle.loads(pickle.dumps(processor))
    assert copy.to_json() == processor.to_json()
    assert [copy.process(t) for t in imdb_raw_texts[:100]] == [processor.process(t) for t in imdb_raw_texts[:100]]


@pytest.mark.slow
@pytest.mark.real_data
def test_treebank_tokenizer_is_nltks_rules_several_times_faster(shared_data, splitter):
    """Same tokens as NLTK's TreebankWordTokenizer on 1,000 IMDB reviews, >= 2x its speed in the
    same process (measured 3.1-3.3x here: untimed regexes and rule triggers, see pipeline/data/text.py).
    A ratio, not a documents/s figure: machines differ, the ratio should not."""
    import time

    from nltk.tokenize import TreebankWordTokenizer

    texts = []
    with tarfile.open(shared_data / "aclImdb.tar.gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".txt") and "/test/" in member.name:
                texts.append(archive.extractfile(member).read().decode("utf-8"))
                if len(texts) == 1000:
                    break
    sentences = [sentence for text in texts for sentence in splitter.split(text)]
    ours, stock = WordTokenizer("treebank", lowercase=True), TreebankWordTokenizer()
    best = {"ours": float("inf"), "stock": float("inf")}
    for _ in range(2):  # best of two: a hiccup of the machine should not decide
        started = time.process_time()
        mine = [ours.tokenize(s) for s in sentences]
        middle = time.process_time()
        theirs = [[token.lower() for token in stock.tokenize(s)] for s in sentences]
        best["ours"] = min(best["ours"], middle - started)
        best["stock"] = min(best["stock"], time.process_time() - middle)
    assert mine == theirs
    ratio = best["stock"] / best["ours"]
    assert ratio >= 2.0, f"only {ratio:.2f}x NLTK's speed; NLTK's timed regexes back in use? (see pipeline/data/text.py)"
