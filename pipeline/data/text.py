"""Raw text -> sentences -> word tokens, identically for preprocessing and for the served model.

Sentences come from an NLTK Punkt model (the installed English parameters when present, else
trained on the corpus) plus known abbreviations; words from a tokenizer that needs no NLTK
data. Everything persists as JSON, never as pickle.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import regex
from nltk.tokenize import ToktokTokenizer, TreebankWordTokenizer
from nltk.tokenize.punkt import (
    PunktLanguageVars,
    PunktParameters,
    PunktSentenceTokenizer,
    PunktToken,
    PunktTrainer,
    _re_non_punct,
    load_punkt_params,
)

NORMALIZATIONS = ("NFC", "NFKC", "none")
TOKENIZER_KINDS = ("treebank", "toktok", "regexp")
REGEXP_PATTERN = r"\w+(?:[-']\w+)*|[^\w\s]"

SPLITTER_FORMAT = "punkt-parameters"
PROCESSOR_FORMAT = "text-processor"
FORMAT_VERSION = 1

# Tags that separate blocks become paragraph breaks; IMDB writes "<br /><br />" between paragraphs.
_BLOCK_TAG = re.compile(r"<\s*(?:br|hr|p)\s*/?\s*>|<\s*/\s*p\s*>", re.IGNORECASE)
# Inline formatting tags carry no words. Anything else in angle brackets ("<grin>", "<3") is text.
_INLINE_TAG = re.compile(r"<\s*/?\s*(?:i|b|u|em|strong)\s*>", re.IGNORECASE)
_LINE_ENDING = re.compile(r"\r\n?")
_SPACE_RUN = re.compile(r"[^\S\n]+")  # whitespace other than newlines
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# Punkt is trained on chunks of documents: one huge string would hold millions of token objects.
_TRAIN_CHUNK_CHARS = 1_000_000
# A mail or news header line: an RFC 5322 field name (printable ASCII but ':') and a colon; or a folded continuation.
_HEADER_FIELD = re.compile(r"[!-9;-~]+:")
_HEADER_CONTINUATION = re.compile(r"[ \t]")


def normalize_text(text: str, normalization: str) -> str:
    """Unicode-normalize and clean raw text; paragraphs come back separated by exactly one blank line.

    HTML line breaks (``<br />``, ``<br/>``, ``<br>``, any case), ``<p>`` and ``<hr>`` become
    paragraph breaks; ``<i>``/``<b>``/``<u>``/``<em>``/``<strong>`` are removed; runs of spaces
    and tabs become one space.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unicode normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if normalization != "none":
        text = unicodedata.normalize(normalization, text)
    if "<" in text:
        text = _BLOCK_TAG.sub("\n\n", text)
        text = _INLINE_TAG.sub("", text)
    if "\r" in text:
        text = _LINE_ENDING.sub("\n", text)
    text = _SPACE_RUN.sub(" ", text)
    if "\n" in text:
        text = _SPACE_AROUND_NEWLINE.sub("\n", text)
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


class LineFilter:
    """Lines of a raw document that are not its text (``preprocess.drop_header``, ``preprocess.drop_lines``).

    ``drop_header``: a leading header block is dropped: the lines before the first blank line, when
    each is a field (``From: ...``, ``Subject: ...``, ``NNTP-Posting-Host: ...``) or a continuation
    of one (starts with a space or tab); a block with any other line is text, and stays.
    ``patterns``: regular expressions; a line in which any of them matches (``re.search``) is dropped.
    Lines are the raw text's, before Unicode normalization and sentence splitting.
    """

    def __init__(self, drop_header: bool = False, patterns: Iterable[str] = ()) -> None:
        self.drop_header = bool(drop_header)
        self.patterns = list(patterns)
        self._compiled = [re.compile(pattern) for pattern in self.patterns]

    def __bool__(self) -> bool:
        return self.drop_header or bool(self.patterns)

    def apply(self, text: str) -> tuple[str, int, int]:
        """``text`` without the dropped lines, how many lines were dropped and how many characters they held."""
        if not self:
            return text, 0, 0
        lines = _LINE_ENDING.sub("\n", text).split("\n")
        start = self._header_lines(lines) if self.drop_header else 0
        kept = [line for line in lines[start:] if not any(p.search(line) for p in self._compiled)]
        dropped = len(lines) - len(kept)
        if not dropped:
            return text, 0, 0
        characters = sum(map(len, lines)) - sum(map(len, kept))
        return "\n".join(kept), dropped, characters

    @staticmethod
    def _header_lines(lines: list[str]) -> int:
        """How many leading lines form a header block (0 when the text does not start with one)."""
        if not lines or not _HEADER_FIELD.match(lines[0]):
            return 0
        end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
        block = lines[1:end]
        if all(_HEADER_FIELD.match(line) or _HEADER_CONTINUATION.match(line) for line in block):
            return end
        return 0

    def to_json(self) -> dict[str, Any]:
        return {"drop_header": self.drop_header, "drop_lines": list(self.patterns)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LineFilter:
        return cls(bool(data.get("drop_header", False)), data.get("drop_lines", ()))

    def __repr__(self) -> str:
        return f"LineFilter(drop_header={self.drop_header}, patterns={self.patterns!r})"


class SentenceSplitter:
    """NLTK Punkt sentence splitter: installed Punkt data when present, else trained on the corpus.

    ``origin`` is ``"installed"`` or ``"trained"``; ``extra_abbreviations`` are the known
    abbreviations (lowercase, without the final period, e.g. ``"dr"``, ``"u.s"``) added to
    what Punkt found; ``training_documents`` is how many documents a trained model saw.
    ``params`` are taken over (the abbreviations are added to them), not copied.
    """

    def __init__(
        self,
        params: PunktParameters,
        origin: str,
        extra_abbreviations: Iterable[str] = (),
        training_documents: int | None = None,
    ) -> None:
        if origin not in ("installed", "trained"):
            raise ValueError(f"origin must be 'installed' or 'trained', got {origin!r}")
        self.origin = origin
        self.extra_abbreviations = _clean_abbreviations(extra_abbreviations)
        self.training_documents = training_documents
        params.abbrev_types.update(self.extra_abbreviations)
        params.ortho_context = _OrthoContext(params.ortho_context)
        self.params = params
        self._punkt = PunktSentenceTokenizer(params, lang_vars=_PunktLanguageVars(), token_cls=_PunktToken)

    # ------------------------------------------------------------------ construction
    @classmethod
    def installed(cls, extra_abbreviations: Iterable[str] = ()) -> SentenceSplitter | None:
        """The English ``punkt_tab`` model from installed NLTK data, or None when it is not installed.

        Only looks on disk (``nltk.data.path``); never downloads.
        """
        from nltk.data import find

        try:
            params = load_punkt_params(find("tokenizers/punkt_tab/english/"))
        except LookupError:
            return None
        return cls(params, "installed", extra_abbreviations)

    @classmethod
    def train(cls, texts: Iterable[str], extra_abbreviations: Iterable[str] = ()) -> SentenceSplitter:
        """Learn Punkt parameters from ``texts`` (normalized with ``normalize_text``), offline.

        Abbreviations that the corpus does not teach (BBC writes "Mr Blair", so a model
        trained on it splits "Mr. Smith") are added from ``extra_abbreviations``.
        """
        trainer = PunktTrainer(lang_vars=_PunktLanguageVars(), token_cls=_PunktToken)
        documents = 0
        chunk: list[str] = []
        chunk_chars = 0
        for text in texts:
            documents += 1
            chunk.append(text)
            chunk_chars += len(text)
            if chunk_chars >= _TRAIN_CHUNK_CHARS:
                trainer.train("\n\n".join(chunk), finalize=False)
                chunk, chunk_chars = [], 0
        if chunk:
            trainer.train("\n\n".join(chunk), finalize=False)
        if documents == 0:
            raise ValueError("cannot train a Punkt sentence splitter on no documents; pass the training texts")
        trainer.finalize_training()
        return cls(trainer.get_params(), "trained", extra_abbreviations, training_documents=documents)

    # ------------------------------------------------------------------ use
    def split(self, text: str) -> list[str]:
        """Sentences of ``text``: paragraphs (blank-line separated) first, then Punkt within each."""
        sentences = []
        for paragraph in _PARAGRAPH_BREAK.split(text):
            for sentence in self._punkt.tokenize(paragraph):
                sentence = sentence.strip()
                if sentence:
                    sentences.append(sentence.replace("\n", " "))
        return sentences

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        params = self.params
        return {
            "format": SPLITTER_FORMAT,
            "version": FORMAT_VERSION,
            "origin": self.origin,
            "training_documents": self.training_documents,
            "extra_abbreviations": self.extra_abbreviations,
            "counts": {
                "abbrev_types": len(params.abbrev_types),
                "collocations": len(params.collocations),
                "sent_starters": len(params.sent_starters),
                "ortho_context": sum(1 for flags in params.ortho_context.values() if flags),
            },
            "abbrev_types": sorted(params.abbrev_types),
            "collocations": [list(pair) for pair in sorted(params.collocations)],
            "sent_starters": sorted(params.sent_starters),
            "ortho_context": {word: flags for word, flags in sorted(params.ortho_context.items()) if flags},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SentenceSplitter:
        _check_format(data, SPLITTER_FORMAT, "sentence splitter")
        try:
            params = PunktParameters()
            params.abbrev_types = set(data["abbrev_types"])
            params.collocations = {(first, second) for first, second in data["collocations"]}
            params.sent_starters = set(data["sent_starters"])
            params.ortho_context = {word: int(flags) for word, flags in data["ortho_context"].items()}
            return cls(params, data["origin"], data.get("extra_abbreviations", ()), data.get("training_documents"))
        except KeyError as err:
            raise ValueError(f"sentence splitter JSON lacks the field {err.args[0]!r}; re-run preprocessing") from None
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"sentence splitter JSON is malformed ({err}); re-run preprocessing") from None

    def save(self, path: str | Path) -> None:
        _write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SentenceSplitter:
        return cls.from_json(_read_json(Path(path), "sentence splitter"))

    def __reduce__(self):
        # Workers get exactly what the JSON artifact holds, so they split like the served model.
        return (SentenceSplitter.from_json, (self.to_json(),))

    def __repr__(self) -> str:
        return (
            f"SentenceSplitter(origin={self.origin!r}, abbrev_types={len(self.params.abbrev_types)}, "
            f"training_documents={self.training_documents})"
        )


class WordTokenizer:
    """Sentence -> word tokens with a tokenizer that needs no NLTK data.

    ``kind``: ``"treebank"`` (Penn Treebank rules: splits clitics such as "n't" and "'s",
    rewrites double quotes as `````` and ``''``), ``"toktok"`` or ``"regexp"``
    (``\\w+(?:[-']\\w+)*|[^\\w\\s]``: words with inner hyphens/apostrophes, and single symbols).
    """

    def __init__(self, kind: str, lowercase: bool) -> None:
        if kind not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer must be one of {TOKENIZER_KINDS}, got {kind!r}")
        self.kind = kind
        self.lowercase = lowercase
        if kind == "treebank":
            self._tokenize = _TreebankTokenizer().tokenize
        elif kind == "toktok":
            self._tokenize = _ToktokTokenizer().tokenize
        else:
            self._tokenize = _REGEXP_TOKEN.findall

    def tokenize(self, sentence: str) -> list[str]:
        # Lowercase after tokenizing, so that the rules see the text as written.
        tokens = self._tokenize(sentence)
        if self.lowercase:
            return [token.lower() for token in tokens]
        return tokens

    def __reduce__(self):
        return (WordTokenizer, (self.kind, self.lowercase))

    def __repr__(self) -> str:
        return f"WordTokenizer(kind={self.kind!r}, lowercase={self.lowercase})"


class TextProcessor:
    """Raw document -> sentences of word tokens; what preprocessing and the served model both use.

    ``line_filter`` (optional) drops the lines that are not the document first (a mail header), so
    a served text is read as the training documents were.
    """

    def __init__(self, splitter: SentenceSplitter, tokenizer: WordTokenizer, normalization: str,
                 line_filter: LineFilter | None = None) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unicode normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.splitter = splitter
        self.tokenizer = tokenizer
        self.normalization = normalization
        self.line_filter = line_filter if line_filter else None

    def process(self, text: str) -> list[list[str]]:
        """Token lists of the sentences that have at least one token."""
        return [tokens for _, tokens in self._sentences(text)]

    def sentences_and_tokens(self, text: str) -> tuple[list[str], list[list[str]]]:
        """Sentence strings (normalized) aligned with their token lists; sentences without tokens dropped."""
        sentences, token_lists = [], []
        for sentence, tokens in self._sentences(text):
            sentences.append(sentence)
            token_lists.append(tokens)
        return sentences, token_lists

    def _sentences(self, text: str) -> Iterator[tuple[str, list[str]]]:
        tokenize = self.tokenizer.tokenize
        if self.line_filter is not None:
            text = self.line_filter.apply(text)[0]
        for sentence in self.splitter.split(normalize_text(text, self.normalization)):
            tokens = tokenize(sentence)
            if tokens:
                yield sentence, tokens

    def to_json(self) -> dict[str, Any]:
        data = {
            "format": PROCESSOR_FORMAT,
            "version": FORMAT_VERSION,
            "normalization": self.normalization,
            "tokenizer": self.tokenizer.kind,
            "lowercase": self.tokenizer.lowercase,
            "splitter": self.splitter.to_json(),
        }
        if self.line_filter is not None:  # absent when nothing is dropped: older files read the same
            data["drop"] = self.line_filter.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TextProcessor:
        _check_format(data, PROCESSOR_FORMAT, "text processor")
        try:
            tokenizer = WordTokenizer(data["tokenizer"], bool(data["lowercase"]))
            line_filter = LineFilter.from_json(data["drop"]) if data.get("drop") else None
            return cls(SentenceSplitter.from_json(data["splitter"]), tokenizer, data["normalization"], line_filter)
        except KeyError as err:
            raise ValueError(f"text processor JSON lacks the field {err.args[0]!r}; re-run preprocessing") from None

    def save(self, path: str | Path) -> None:
        _write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> TextProcessor:
        return cls.from_json(_read_json(Path(path), "text processor"))

    def __repr__(self) -> str:
        return (f"TextProcessor({self.splitter!r}, {self.tokenizer!r}, normalization={self.normalization!r}, "
                f"line_filter={self.line_filter!r})")


# --------------------------------------------------------------------------- NLTK's rules, without the per-call timeout
# NLTK wraps every pattern in ``nltk.redos.TimedPattern``, which runs the ``regex`` engine with
# a wall-clock timeout on each call; on short sentences that check costs more than the match
# (Punkt splitting and Treebank tokenization ran 3-4x slower). We run NLTK's own fixed patterns,
# unchanged, with the same engine and flags and in NLTK's order, but without the timeout; they
# backtrack linearly. tests/data/test_text.py checks that sentences and tokens stay identical
# to NLTK's on real BBC and IMDB text.


def _untimed(pattern: Any) -> Any:
    """The compiled pattern inside an NLTK ``redos.TimedPattern`` (any other pattern as is)."""
    if isinstance(pattern, re.Pattern | regex.Pattern):
        return pattern
    return regex.compile(pattern.pattern, pattern.flags)


class _OrthoContext(dict):
    """Punkt's word -> orthographic-context flags; an unknown word has flags 0.

    NLTK uses a ``defaultdict(int)``, which stores every word the splitter ever looks up: the
    parameters (and their JSON) would change with use and grow without bound in a server.
    """

    def __missing__(self, word: str) -> int:
        return 0


class _PunktLanguageVars(PunktLanguageVars):
    """NLTK's English Punkt language variables, untimed."""

    __slots__ = ()
    re_boundary_realignment = _untimed(PunktLanguageVars.re_boundary_realignment)

    def __init__(self) -> None:
        self._re_word_tokenizer = _untimed(PunktLanguageVars()._word_tokenizer_re())
        self._re_period_context = _untimed(PunktLanguageVars().period_context_re())


class _PunktToken(PunktToken):
    """NLTK's Punkt token, untimed."""

    __slots__ = ()
    _RE_ELLIPSIS = _untimed(PunktToken._RE_ELLIPSIS)
    _RE_NUMERIC = _untimed(PunktToken._RE_NUMERIC)
    _RE_INITIAL = _untimed(PunktToken._RE_INITIAL)
    _RE_ALPHA = _untimed(PunktToken._RE_ALPHA)
    _RE_NON_PUNCT = _untimed(_re_non_punct)

    @property
    def is_non_punct(self) -> bool:
        return bool(self._RE_NON_PUNCT.search(self.type))


# A Treebank rule can only match when one of these substrings is in the text, so it is skipped
# otherwise (most sentences have no quotes, brackets or colons). Keyed by NLTK's pattern source:
# a pattern NLTK changes simply loses its shortcut and always runs.
_TREEBANK_TRIGGERS = {
    r"^\"": ('"',),
    r"(``)": ("``",),
    r"([ \(\[{<])(\"|\'{2})": ('"', "''"),
    r"([:,])([^\d])": (":", ","),
    r"([:,])$": (":", ","),
    r"\.\.\.": ("...",),
    r"[;@#$%&]": tuple(";@#$%&"),
    r"""([^\.])(\.)([\]\)}>"\']*)\s*$""": (".",),
    r"[?!]": ("?", "!"),
    r"([^'])' ": ("' ",),
    r"[\]\[\(\)\{\}\<\>]": tuple("[](){}<>"),
    r"--": ("--",),
    r"''": ("''",),
    r'"': ('"',),
    r"([^' ])('[sS]|'[mM]|'[dD]|') ": ("'",),
    r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ": ("'",),
    # Case-insensitive contractions: looked up in the lowercased text (ASCII text only).
    r"(?i)\b(can)(?#X)(not)\b": ("cannot",),
    r"(?i)\b(d)(?#X)('ye)\b": ("d'ye",),
    r"(?i)\b(gim)(?#X)(me)\b": ("gimme",),
    r"(?i)\b(gon)(?#X)(na)\b": ("gonna",),
    r"(?i)\b(got)(?#X)(ta)\b": ("gotta",),
    r"(?i)\b(lem)(?#X)(me)\b": ("lemme",),
    r"(?i)\b(more)(?#X)('n)\b": ("more'n",),
    r"(?i)\b(wan)(?#X)(na)(?=\s)": ("wanna",),
    r"(?i) ('t)(?#X)(is)\b": ("'",),
    r"(?i) ('t)(?#X)(was)\b": ("'",),
}

_Rule = tuple[Any, str, tuple[str, ...] | None]


def _treebank_rules(pairs: Iterable[tuple[Any, str]]) -> list[_Rule]:
    return [(_untimed(p), sub, _TREEBANK_TRIGGERS.get(p.pattern)) for p, sub in pairs]


class _TreebankTokenizer:
    """``nltk.TreebankWordTokenizer().tokenize``: the same rules in the same order, skipping rules that cannot match."""

    _BEFORE_PADDING = _treebank_rules(
        [
            *TreebankWordTokenizer.STARTING_QUOTES,
            *TreebankWordTokenizer.PUNCTUATION,
            TreebankWordTokenizer.PARENS_BRACKETS,
            TreebankWordTokenizer.DOUBLE_DASHES,
        ]
    )
    _ENDING_QUOTES = _treebank_rules(TreebankWordTokenizer.ENDING_QUOTES)
    _CONTRACTIONS = _treebank_rules(
        (pattern, r" \1 \2 ")
        for pattern in [*TreebankWordTokenizer.CONTRACTIONS2, *TreebankWordTokenizer.CONTRACTIONS3]
    )

    def tokenize(self, text: str) -> list[str]:
        text = self._apply(self._BEFORE_PADDING, text)
        text = self._apply(self._ENDING_QUOTES, " " + text + " ")
        if not text.isascii():
            # Under IGNORECASE "ı" matches "i" and the Kelvin sign "k": no literal shortcut.
            for pattern, substitution, _ in self._CONTRACTIONS:
                text = pattern.sub(substitution, text)
            return text.split()
        # These rules only insert spaces, so a trigger absent now cannot appear later.
        lowered = text.lower()
        for pattern, substitution, triggers in self._CONTRACTIONS:
            if triggers is None or any(trigger in lowered for trigger in triggers):
                text = pattern.sub(substitution, text)
        return text.split()

    @staticmethod
    def _apply(rules: list[_Rule], text: str) -> str:
        for pattern, substitution, triggers in rules:
            if triggers is None or any(trigger in text for trigger in triggers):
                text = pattern.sub(substitution, text)
        return text


# Compiled as nltk.RegexpTokenizer compiles it (engine and flags), minus the timeout.
_REGEXP_TOKEN = regex.compile(REGEXP_PATTERN, regex.VERSION0 | regex.UNICODE | regex.MULTILINE | regex.DOTALL)


class _ToktokTokenizer:
    """``nltk.ToktokTokenizer.tokenize``, same rules, same order."""

    _RULES = [(_untimed(p), sub) for p, sub in ToktokTokenizer.TOKTOK_REGEXES]

    def tokenize(self, text: str) -> list[str]:
        for pattern, substitution in self._RULES:
            text = pattern.sub(substitution, text)
        return text.split()


# --------------------------------------------------------------------------- helpers
def _clean_abbreviations(abbreviations: Iterable[str]) -> list[str]:
    if isinstance(abbreviations, str):
        raise TypeError(f"extra_abbreviations must be a list of strings, got the string {abbreviations!r}")
    cleaned = set()
    for abbreviation in abbreviations:
        # Punkt looks abbreviations up lowercase and without the final period ("u.s" for "U.S.").
        word = abbreviation.strip().lower().removesuffix(".")
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"an abbreviation must be one word like 'dr' or 'u.s', got {abbreviation!r}")
        cleaned.add(word)
    return sorted(cleaned)


def _check_format(data: Any, expected: str, what: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} JSON must be an object, got {type(data).__name__}")
    if data.get("format") != expected:
        raise ValueError(f"not a {what} JSON: format is {data.get('format')!r}, expected {expected!r}")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{what} JSON has version {data.get('version')!r}; this code reads version {FORMAT_VERSION}. "
            "Re-run preprocessing to rebuild it."
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False)
        handle.write("\n")


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} does not exist; run preprocessing first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-run preprocessing") from None
