"""Reuters-21578 as distributed (22 SGML files) -> the project's JSON Lines, in the ModApte split, multi-label.

ModApte (the collection's README, VIII.B): training stories are LEWISSPLIT="TRAIN", test stories LEWISSPLIT="TEST",
both with TOPICS="YES"; every other story is unused. The usual "ModApte, 90 categories" (Yang & Liu 1999, NLTK's
reuters corpus) keeps the topics that label at least one training and one test story, and the stories left with
at least one of them. Every story read is either written or counted under the reason it was not.

    python -m pipeline.data.reuters [--source DIR] [--out FILE] [--categories modapte90|all]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import artifacts_root, data_root

SOURCE_FILES = "reut2-*.sgm"
CATEGORY_CHOICES = ("modapte90", "all")
# Why a story read is not written, in the order the checks run: the first that applies counts.
NOT_WRITTEN_REASONS = ("not_modapte", "no_topics", "no_kept_topics", "empty_text")
MODAPTE_SPLITS = {"TRAIN": "train", "TEST": "test"}

# The files are SGML, not XML (unescaped "&", control characters as &#3;), so stories and fields are found by pattern.
_STORY = re.compile(r"<REUTERS\b([^>]*)>(.*?)</REUTERS>", re.S)
_STORY_START = re.compile(r"<REUTERS\b")
_ATTRIBUTE = re.compile(r'([A-Z]+)="([^"]*)"')
_TOPICS = re.compile(r"<TOPICS>(.*?)</TOPICS>", re.S)
_TOPIC = re.compile(r"<D>(.*?)</D>", re.S)
_TEXT = re.compile(r"<TEXT\b[^>]*>(.*?)</TEXT>", re.S)
_TITLE = re.compile(r"<TITLE>(.*?)</TITLE>", re.S)
_BODY = re.compile(r"<BODY>(.*?)</BODY>", re.S)
_TAG = re.compile(r"<[^>]*>")  # on the raw text only: a decoded "&lt;" is a "<" of the story's own
_ENTITY = re.compile(r"&(?:#(\d+)|(lt|gt|amp|quot));")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # the feed's framing (\x02 .. \x03, \x1f, \x7f) and CRs
_CARET_M = re.compile(r"\^M$", re.M)  # a carriage return some stories carry as the two characters "^M"
# The "Reuter" signature that ends most stories: "Reuter", "REUTER", "reuter", "REUTERS", "REUTER...", indented or
# flush left, but never a flush-left "Reuters." (a wrapped "... told\nReuters." ends a sentence). In capitals or
# lower case it may also end the last line itself ("total 55.8 (33.7).        REUTER", "NIL. REUTER11:43/VB").
# A few stories are signed twice ("February 28. REUTER\n Reuter").
_SIGNATURE = re.compile(
    r"(?:(?:\A|\n)[ \t]+(?i:reuters?|reute)\.*|(?:\A|\n)(?:REUTERS?|REUTE|Reuter|reuters?)\.*"
    r"|[ \t]+(?:REUTERS?|reuter)\S*)[ \t]*\Z"
)


class ReutersError(Exception):
    """The source cannot be converted; the message says where and what to do."""


@dataclass(frozen=True)
class Story:
    """One ``<REUTERS>`` element: its ids, what ModApte needs and its text (title, blank line, body)."""

    newid: str
    lewis_split: str
    topics_attribute: str  # TOPICS="YES" | "NO" | "BYPASS": whether the indexers assigned topics at all
    topics: tuple[str, ...]  # the <D> entries, each once, in the file's order
    text: str

    @property
    def modapte_split(self) -> str | None:
        """``train`` or ``test`` in ModApte, ``None`` for an unused story."""
        return MODAPTE_SPLITS.get(self.lewis_split) if self.topics_attribute == "YES" else None


# ------------------------------------------------------------------------- reading


def source_files(source_dir: Path) -> list[Path]:
    """The ``reut2-*.sgm`` files of ``source_dir`` in order, or ``ReutersError`` saying what is missing."""
    if not source_dir.is_dir():
        raise ReutersError(
            f"the Reuters-21578 folder {source_dir} does not exist: unpack reuters21578.tar.gz (Distribution 1.0, "
            "from the UCI KDD archive) there, or give --source DIR (here the shared copy: --source "
            "../shared/data/reuters21578, or set HAN_DATA_DIR=../shared/data)"
        )
    files = sorted(source_dir.glob(SOURCE_FILES))
    if not files:
        raise ReutersError(
            f"{source_dir} holds no {SOURCE_FILES} files (Reuters-21578 comes as reut2-000.sgm .. reut2-021.sgm): "
            "give --source the folder that holds them"
        )
    return files


def read_stories(source_dir: Path) -> Iterator[Story]:
    """Every story of every ``reut2-*.sgm`` file in ``source_dir``, in file order."""
    for path in source_files(source_dir):
        # ASCII but for one stray byte (reut2-017.sgm); latin-1 reads any byte, so no story is lost to decoding.
        raw = path.read_bytes().decode("latin-1")
        found, line, counted_to = 0, 1, 0
        for match in _STORY.finditer(raw):
            found += 1
            line += raw.count("\n", counted_to, match.start())
            counted_to = match.start()
            yield _parse_story(match.group(1), match.group(2), f"{path.name}:{line}")
        started = len(_STORY_START.findall(raw))
        if started != found:
            raise ReutersError(f"{path}: {started} <REUTERS> elements start but {found} end with </REUTERS>; the file "
                               "is truncated or damaged: replace it with the distributed one")


def _parse_story(attributes: str, content: str, source: str) -> Story:
    attrs = dict(_ATTRIBUTE.findall(attributes))
    missing = [name for name in ("NEWID", "LEWISSPLIT", "TOPICS") if name not in attrs]
    if missing:
        raise ReutersError(f"{source}: <REUTERS> has no {', '.join(missing)} attribute; the file is not Reuters-21578 "
                           "as distributed")
    topics_element = _TOPICS.search(content)
    topics = _TOPIC.findall(topics_element.group(1)) if topics_element else []
    return Story(
        newid=attrs["NEWID"],
        lewis_split=attrs["LEWISSPLIT"],
        topics_attribute=attrs["TOPICS"],
        topics=tuple(dict.fromkeys(topic.strip() for topic in topics if topic.strip())),
        text=story_text(content),
    )


# ------------------------------------------------------------------------- text


def story_text(content: str) -> str:
    """The title, a blank line, then the body's paragraphs separated by blank lines (the text as configs read it).

    A ``TYPE="BRIEF"`` story is its title alone (its "Blah blah blah." stands for a body that was never sent); a
    ``TYPE="UNPROC"`` story has no title or body element: its whole text is the body. The dateline and author
    are left out.
    """
    text = _TEXT.search(content)
    if text is None:
        return ""
    inner = text.group(1)
    title = _TITLE.search(inner)
    body = _BODY.search(inner)
    title_text = " ".join(_decode(title.group(1)).split()) if title else ""
    if body is not None:
        body_text = body.group(1)
    elif title is None:
        body_text = _TAG.sub("", inner)
    else:
        body_text = ""
    paragraphs = _paragraphs(_without_signature(_decode(body_text)))
    return "\n\n".join(part for part in (title_text, *paragraphs) if part)


def _decode(raw: str) -> str:
    """SGML entities decoded, then control characters (the feed's framing, carriage returns) removed."""

    def replace(match: re.Match[str]) -> str:
        code, name = match.groups()
        if name:
            return _NAMED[name]
        return chr(int(code)) if int(code) < 0xD800 else ""  # the feed's are all below 128; no surrogates in UTF-8

    text = _ENTITY.sub(replace, raw).replace("\t", " ")
    return _CARET_M.sub("", _CONTROL.sub("", text))


def _without_signature(body: str) -> str:
    body = body.rstrip()
    while (unsigned := _SIGNATURE.sub("", body).rstrip()) != body:
        body = unsigned
    return body


def _paragraphs(body: str) -> list[str]:
    """The body's paragraphs, each on one line with single spaces.

    Reuters wraps lines at about 70 columns, flush left, and indents the first line of each paragraph (and each
    row of a table): an indented line, or one after a blank line, starts a paragraph; any other continues one.
    """
    paragraphs: list[list[str]] = []
    after_blank = True
    for line in body.split("\n"):
        if not line.strip():
            after_blank = True
            continue
        if after_blank or line[0] == " ":
            paragraphs.append([])
        paragraphs[-1].append(line)
        after_blank = False
    return [" ".join(" ".join(lines).split()) for lines in paragraphs]


# ------------------------------------------------------------------------- converting


def kept_categories(stories: Iterable[Story], categories: str) -> set[str]:
    """The topics written: ``modapte90``, those on at least one ModApte training and one test story; ``all``, any
    topic of a ModApte story."""
    if categories not in CATEGORY_CHOICES:
        raise ValueError(f"categories must be one of {', '.join(CATEGORY_CHOICES)}, got {categories!r}")
    by_split: dict[str, set[str]] = {"train": set(), "test": set()}
    for story in stories:
        if story.modapte_split is not None:
            by_split[story.modapte_split].update(story.topics)
    if categories == "all":
        return by_split["train"] | by_split["test"]
    return by_split["train"] & by_split["test"]


def not_written_reason(story: Story, kept: set[str]) -> str | None:
    """Why ``story`` is not written (one of ``NOT_WRITTEN_REASONS``), or ``None`` when it is."""
    if story.modapte_split is None:
        return "not_modapte"
    if not story.topics:
        return "no_topics"  # TOPICS="YES" yet no <D>: the README counts them in ModApte, the 90-topic set cannot
    if not kept.intersection(story.topics):
        return "no_kept_topics"
    if not story.text:
        return "empty_text"
    return None


def convert(source_dir: Path, out_path: Path, *, categories: str = "modapte90") -> dict:
    """Write the ModApte stories of ``source_dir`` to ``out_path`` as JSON Lines, and the report beside it.

    One line per story: ``{"id": "reuters-<NEWID>", "text": ..., "labels": [sorted topics], "split": "train" |
    "test"}``. The report (returned, and written to ``<out_path>.report.json``) counts the stories read, written per
    split and not written per reason, and each category's training and test stories. Both files are written to a
    temporary file in their folder first, then renamed: a failed run leaves no half file where a config reads.
    """
    stories = list(read_stories(source_dir))  # two passes: which topics are kept depends on every story
    kept = kept_categories(stories, categories)
    records = []
    not_written = Counter({reason: 0 for reason in NOT_WRITTEN_REASONS})
    for story in stories:
        reason = not_written_reason(story, kept)
        if reason is not None:
            not_written[reason] += 1
            continue
        records.append({"id": f"reuters-{story.newid}", "text": story.text,
                        "labels": sorted(kept.intersection(story.topics)), "split": story.modapte_split})
    report = _report(source_dir, out_path, categories, len(stories), records, not_written)
    _write_atomically(out_path, (json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    _write_atomically(report_path(out_path), [json.dumps(report, indent=2, ensure_ascii=False) + "\n"])
    return report


def report_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".report.json")


def _report(source_dir: Path, out_path: Path, categories: str, read: int, records: list[dict],
            not_written: Counter) -> dict:
    splits = ("train", "test")
    per_category = {split: Counter(label for r in records if r["split"] == split for label in r["labels"])
                    for split in splits}
    names = sorted(set(per_category["train"]) | set(per_category["test"]),
                   key=lambda name: (-per_category["train"][name] - per_category["test"][name], name))
    words = {split: [len(r["text"].split()) for r in records if r["split"] == split] for split in splits}
    return {
        "source": str(source_dir),
        "output": str(out_path),
        "categories_option": categories,
        "stories_read": read,
        "written": {split: len(words[split]) for split in splits},
        "not_written": dict(not_written),
        "mean_words": {split: round(sum(counts) / len(counts), 1) if counts else 0.0 for split, counts in words.items()},
        "categories": {name: {split: per_category[split][name] for split in splits} for name in names},
    }


def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")  # same folder: the final move is a rename
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as file:
            file.writelines(lines)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


# ------------------------------------------------------------------------- command line


def default_source() -> Path:
    return data_root() / "reuters21578"


def default_output() -> Path:
    # Beside the stage outputs, not beside the source: the shared copy of the data is read-only.
    return artifacts_root() / "data" / "reuters-modapte.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.data.reuters",
        description="Convert Reuters-21578 as distributed (reut2-000.sgm .. reut2-021.sgm) into JSON Lines for "
                    "configs/reuters.yaml. ModApte split: train = LEWISSPLIT=TRAIN, test = LEWISSPLIT=TEST, both with "
                    "TOPICS=YES; every other story is unused.",
        epilog='Output: one story per line, {"id": "reuters-<NEWID>", "text": "<title>\\n\\n<body>", "labels": '
               '["acq", ...], "split": "train"|"test"}, and <out>.report.json: stories read, written per split, not '
               "written per reason (not_modapte, no_topics, no_kept_topics, empty_text), and each category's "
               "train/test counts.",
    )
    parser.add_argument("--source", type=Path, default=default_source(),
                        help="the folder of reut2-*.sgm (default: $HAN_DATA_DIR/reuters21578, now %(default)s)")
    parser.add_argument("--out", type=Path, default=default_output(),
                        help="the JSON Lines file to write (default: $HAN_ARTIFACTS_DIR/data/reuters-modapte.jsonl, "
                             "now %(default)s; configs/reuters.yaml reads it there)")
    parser.add_argument("--categories", choices=CATEGORY_CHOICES, default="modapte90",
                        help="modapte90: the topics with a training and a test story (90 on the real files) and the "
                             "stories that keep one; all: every topic of a ModApte story (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        report = convert(args.source, args.out, categories=args.categories)
    except (ReutersError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    written, not_written = report["written"], report["not_written"]
    print(f"read {report['stories_read']:,} stories from {args.source}")
    print(f"wrote {written['train']:,} train + {written['test']:,} test stories in {len(report['categories'])} "
          f"categories to {args.out} (mean words: train {report['mean_words']['train']}, "
          f"test {report['mean_words']['test']})")
    print("not written: " + ", ".join(f"{reason} {count:,}" for reason, count in not_written.items()))
    print(f"report: {report_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
