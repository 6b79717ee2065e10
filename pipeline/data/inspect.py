"""Look at a dataset nobody has described yet and write a starting config for it (``python -m pipeline init-config``).

It reads only the first ``SAMPLE_RECORDS`` records, through the project's own readers, guesses the
format and the text, label, id and split fields, and says what it found and what it doubts.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config import PROJECT_ROOT, DataConfig, PipelineConfig, data_root, load_config
from pipeline.data.readers import (
    SPLIT_NAMES,
    TABLE_SUFFIXES,
    TAR_SUFFIXES,
    ReadReport,
    _is_tar,
    _is_zip,
    _plan_tree,
    read_corpus,
    read_records,
    split_of_name,
)
from pipeline.data.records import RawDocument, Rejected
from pipeline.data.text import LineFilter
from pipeline.data.validate import Validator

SAMPLE_RECORDS = 2000
MAX_LABELS = 50  # more distinct values than this, and an unnamed column is not taken for a label
LABEL_NAMES = ("label", "labels", "category", "class", "topic", "sentiment", "target", "genre", "tag", "y", "rating",
               "stars", "intent", "emotion", "polarity")
ID_NAMES = ("id", "uuid", "guid", "key")
SPLIT_COLUMN_NAMES = ("split", "subset", "fold", "partition", "set")
DEFAULT_MAX_CHARS = DataConfig().max_chars


_HEADERS = LineFilter(drop_header=True)


def _mostly_headers(found: Inspection) -> bool:
    return found.records_sampled > 0 and found.with_header >= found.records_sampled / 2


class InspectError(ValueError):
    """The data cannot be described as a config: what was found and what to do."""


@dataclass
class FieldProfile:
    """What the sample holds in one column: how often it is filled, its values, how long its strings are."""

    name: str
    present: int = 0  # records with a non-empty value
    strings: int = 0
    total_chars: int = 0
    longest: int = 0
    nested: int = 0  # lists and objects: never a label, id or split
    values: Counter = field(default_factory=Counter)  # the value as the readers see it (stripped text)

    def add(self, value: Any) -> None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return
        self.present += 1
        if isinstance(value, (list, dict, tuple)):
            self.nested += 1
            return
        if isinstance(value, str):
            self.strings += 1
            self.total_chars += len(value)
            self.longest = max(self.longest, len(value))
        self.values[str(value).strip()] += 1

    @property
    def mean_chars(self) -> float:
        return self.total_chars / self.strings if self.strings else 0.0

    @property
    def distinct(self) -> int:
        return len(self.values)

    def examples(self, k: int = 3, width: int = 40) -> list[str]:
        return [_shorten(value, width) for value in islice(self.values, k)]


@dataclass
class Inspection:
    """What ``inspect_data`` found: the format, the fields, and what the readers make of the sample."""

    path: Path
    format: str
    format_reason: str
    text_field: str | None = None
    label_field: str | None = None
    id_field: str | None = None
    split_field: str | None = None
    profiles: dict[str, FieldProfile] = field(default_factory=dict)
    records_sampled: int = 0
    sampled_all: bool = True
    documents_total: int | None = None  # a folder's document count, known from its file names
    labels: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)
    longest_text: int = 0
    decode_error_bytes: int = 0
    skipped_files: int = 0
    split_paths: dict[str, Path] = field(default_factory=dict)  # a table file per split, named by its split
    with_header: int = 0  # sampled texts that start with a mail/news header block (preprocess.drop_header)
    doubts: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- inspection


def inspect_data(path: str | Path, sample: int = SAMPLE_RECORDS) -> Inspection:
    """Describe the dataset at ``path`` from its first ``sample`` records."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InspectError(f"{path} does not exist (relative paths are read from {Path.cwd()})")
    fmt, reason, doubts = detect_format(path)
    found = Inspection(path=path, format=fmt, format_reason=reason, doubts=doubts)
    if path.is_dir() and fmt in TABLE_SUFFIXES:
        found.split_paths = split_files(path, fmt)
    elif path.is_file() and fmt in TABLE_SUFFIXES and split_of_name(_stem(path.name, fmt)) is not None:
        siblings = split_files(path.parent, fmt)
        if siblings and path in siblings.values():
            found.doubts.append(f"{', '.join(p.name for p in siblings.values())} lie side by side, a file per split: "
                                f"give the folder ({path.parent}) to read them all, each as its split")
    if fmt == "folder":
        _inspect_folder(found, sample)
    else:
        _inspect_table(found, sample)
    return found


def detect_format(path: Path) -> tuple[str, str, list[str]]:
    """The ``data.format`` that reads ``path``, why, and doubts: by name, else by the first bytes."""
    name = path.name.lower()
    if path.is_file():
        for fmt, suffixes in TABLE_SUFFIXES.items():
            if name.endswith(suffixes):
                return fmt, f"from the {Path(name).suffix} suffix", []
        if _is_zip(path) or _is_tar(path):
            return "folder", "an archive: its <label>/<document> files are read inside it", []
        with path.open("rb") as file:
            head = file.read(4096)
        if head.startswith(b"PAR1"):
            return "parquet", "from the first bytes: Parquet's magic number", []
        if _is_json_object(head.lstrip().split(b"\n", 1)[0]):
            return "jsonl", "from the first line: a JSON object", []
        raise InspectError(
            f"{path}: cannot tell its format; the readers take .csv (with a header row), .jsonl/.ndjson (one JSON "
            f"object per line), .parquet, a folder of <label>/<document> or an archive of one ({', '.join(('.zip', *TAR_SUFFIXES))})"
        )
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    counts = Counter()
    for fmt, suffixes in TABLE_SUFFIXES.items():
        counts[fmt] = sum(n.lower().endswith(suffixes) and not Path(n).name.startswith(".") for n in names)
    documents, _ = _plan_tree(names)
    counts["folder"] = len(documents)
    found = [(fmt, n) for fmt, n in counts.most_common() if n]
    if not found:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise InspectError(
            f"{path}: no .csv, .jsonl, .ndjson or .parquet files and no <label>/<document> (or <split>/<label>/<document>; "
            f"a document: *.txt or a name without an extension) folders in it; found {len(names)} other files{': ' + shown if shown else ''}"
        )
    fmt, n = found[0]
    what = "documents in class folders" if fmt == "folder" else f"{' / '.join(TABLE_SUFFIXES[fmt])} files"
    doubts = [f"the folder also holds {m:,} {'documents in class folders' if other == 'folder' else other + ' files'}, "
              f"which data.format {fmt} does not read" for other, m in found[1:]]
    return fmt, f"{n:,} {what} in the folder", doubts


def split_files(folder: Path, fmt: str) -> dict[str, Path]:
    """The ``fmt`` files in ``folder`` as a ``data.path`` per split, when each file's name says a different
    split (``train.csv``, ``test.csv``, ``imdb_dev.jsonl``) and one is train; else ``{}``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(TABLE_SUFFIXES[fmt]))
    found: dict[str, Path] = {}
    for file in files:
        split = split_of_name(_stem(file.name, fmt))
        if split is None or split in found:
            return {}
        found[split] = file
    return {split: found[split] for split in ("train", "validation", "test") if split in found} if "train" in found \
        and len(found) > 1 else {}


def _stem(name: str, fmt: str) -> str:
    lowered = name.lower()
    return next((name[: -len(suffix)] for suffix in TABLE_SUFFIXES[fmt] if lowered.endswith(suffix)), name)


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _inspect_table(found: Inspection, sample: int) -> None:
    config = DataConfig(format=found.format, path=str(found.path))
    records, rejected = [], 0
    stream = read_records(config, found.path)
    try:
        for item in stream:
            if len(records) + rejected == sample:
                found.sampled_all = False
                break
            if isinstance(item, Rejected):
                rejected += 1
            else:
                records.append(item)
    finally:
        stream.close()
    if not records:
        raise InspectError(f"{found.path}: no readable {found.format} records in the first {sample:,}"
                           f"{f' ({rejected:,} could not be parsed)' if rejected else ''}")
    profiles: dict[str, FieldProfile] = {}
    for record in records:
        for name, value in record.items():
            profiles.setdefault(name, FieldProfile(name)).add(value)
    found.profiles = profiles
    _choose_fields(found, len(records))
    fields = DataConfig(format=found.format, path=str(found.path), text_field=found.text_field,
                        label_field=found.label_field, id_field=found.id_field, split_field=found.split_field)
    _read_sample(found, fields, sample)


def _inspect_folder(found: Inspection, sample: int) -> None:
    documents, skipped = _plan_tree(_tree_names(found.path))
    found.documents_total = len(documents)
    found.skipped_files = len(skipped)
    found.labels = Counter(doc.label for doc in documents)
    found.splits = Counter(doc.split or "(none)" for doc in documents)
    _read_sample(found, DataConfig(format="folder", path=str(found.path)), sample, count_labels=False)
    found.sampled_all = found.records_sampled >= found.documents_total
    if len(found.labels) < 2:
        found.doubts.append(f"only one class folder ({next(iter(found.labels))!r}); a classifier needs at least two")


def _tree_names(path: Path) -> list[str]:
    """The file names in a folder or archive, as ``read_documents`` lists them (without reading the files)."""
    if path.is_dir():
        return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    try:
        if _is_zip(path):
            with zipfile.ZipFile(path) as archive:
                return sorted(info.filename for info in archive.infolist() if not info.is_dir())
        with tarfile.open(path, "r:*") as archive:
            return [member.name for member in archive.getmembers() if member.isfile()]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise InspectError(f"{path}: not a readable archive ({err})") from None


def _read_sample(found: Inspection, config: DataConfig, sample: int, count_labels: bool = True) -> None:
    """Read the sample as preprocess will (the readers, then validation): labels, splits, what is quarantined."""
    report = ReadReport()
    validator = Validator(None, config.max_chars)
    stream = read_corpus(config, found.split_paths or {None: found.path}, report)
    read = 0
    try:
        for record in islice(stream, sample):
            read += 1
            if isinstance(record, RawDocument) and record.text:
                found.longest_text = max(found.longest_text, len(record.text))
                found.with_header += _HEADERS.apply(record.text)[1] > 0
            outcome = validator.check(record)
            if isinstance(outcome, Rejected):
                found.quarantined[outcome.reason] += 1
            elif count_labels:
                found.labels[outcome.label] += 1
                found.splits[outcome.split or "(none)"] += 1
            if found.format == "folder" and isinstance(record, RawDocument):
                found.profiles.setdefault("text", FieldProfile("text")).add(record.text)
    finally:
        stream.close()
    found.records_sampled = read
    found.decode_error_bytes = report.decode_error_bytes
    found.skipped_files = max(found.skipped_files, len(report.skipped_files))
    if found.decode_error_bytes:
        found.doubts.append(f"{found.decode_error_bytes:,} bytes of the sample are not valid {config.encoding}; "
                            f"those texts are decoded as {config.encoding_fallback} (data.encoding_fallback)")
    if found.longest_text > DEFAULT_MAX_CHARS:
        found.doubts.append(f"a text of {found.longest_text:,} characters, over data.max_chars' default of "
                            f"{DEFAULT_MAX_CHARS:,}: the config raises data.max_chars")
    if _mostly_headers(found):
        found.doubts.append(f"{found.with_header:,} of {read:,} sampled texts start with a mail/news header (From:, "
                            "Subject:, ...): a model learns its senders and hosts as a shortcut, so the config drops it "
                            "(preprocess.drop_header: true; README: Data formats)")


def _choose_fields(found: Inspection, records: int) -> None:
    """Pick the split, text, label and id columns of a table from the profiles, noting each doubt."""
    profiles = found.profiles
    doubts = found.doubts

    def named(name: str, words: tuple[str, ...]) -> bool:
        lowered = name.lower()
        return lowered in words or any(lowered.endswith(("_" + w, "-" + w, " " + w)) for w in words)

    # Split: every value one the readers accept (train, test, val, validation, dev).
    splits = [p for p in profiles.values() if not found.split_paths  # the file names say the split
              and p.present and not p.nested and all(v.lower() in SPLIT_NAMES for v in p.values)]
    splits.sort(key=lambda p: (not named(p.name, SPLIT_COLUMN_NAMES), -p.present))
    for p in profiles.values():
        if named(p.name, SPLIT_COLUMN_NAMES) and p not in splits and p.present:
            odd = [v for v in p.values if v.lower() not in SPLIT_NAMES][:3]
            doubts.append(f"column {p.name!r} has values other than {', '.join(SPLIT_NAMES)} ({', '.join(map(repr, odd))}): "
                          "not used as data.split_field, so the split comes from preprocess.split's fractions")
    if splits:
        found.split_field = splits[0].name
        _note_choice(doubts, "the split", splits, "named like a split" if named(splits[0].name, SPLIT_COLUMN_NAMES)
                     else "the most filled in")
        seen = {SPLIT_NAMES[v.lower()] for v in profiles[found.split_field].values}
        if "test" not in seen:
            doubts.append(f"no 'test' value in {found.split_field!r} in the sample: if the data has none, the test split "
                          "is empty; remove data.split_field to draw train/validation/test by preprocess.split instead")

    # Text: the strings that are longest on average.
    texts = [p for p in profiles.values()
             if p.name != found.split_field and p.strings and p.strings >= p.present / 2]
    if not texts:
        raise InspectError(f"{found.path}: no column holds text; columns: {', '.join(map(repr, profiles))}")
    texts.sort(key=lambda p: -p.mean_chars)
    found.text_field = texts[0].name
    if len(texts) > 1 and texts[1].mean_chars >= 0.5 * texts[0].mean_chars:
        doubts.append(f"{texts[1].name!r} is almost as long ({texts[1].mean_chars:,.0f} characters on average against "
                      f"{texts[0].mean_chars:,.0f}); chose {found.text_field!r} as the text")

    # Label: few distinct values that repeat; a column named like a label first.
    def could_be_label(p: FieldProfile) -> bool:
        if p.name in (found.text_field, found.split_field) or p.nested or not p.present:
            return False
        repeats = p.distinct < p.present
        if named(p.name, LABEL_NAMES):
            return repeats or p.distinct <= MAX_LABELS
        return 2 <= p.distinct <= MAX_LABELS and repeats and not named(p.name, ID_NAMES)

    labels = [p for p in profiles.values() if could_be_label(p)]
    labels.sort(key=lambda p: (not named(p.name, LABEL_NAMES), -p.present, p.distinct))
    for p in profiles.values():
        if p.nested and named(p.name, LABEL_NAMES):
            doubts.append(f"column {p.name!r} holds lists in {p.nested:,} records (several labels each); the pipeline "
                          "takes one label per document and quarantines those records (unparsable)")
    if not labels:
        others = [p for p in profiles.values() if p.name not in (found.text_field, found.split_field) and not p.nested]
        if not others:
            raise InspectError(f"{found.path}: no column besides the text ({found.text_field!r}) could be the label; "
                               f"columns: {', '.join(map(repr, profiles))}")
        labels = sorted(others, key=lambda p: (p.distinct, -p.present))
        doubts.append(f"no column has at most {MAX_LABELS} repeating values; chose {labels[0].name!r} "
                      f"({labels[0].distinct:,} values in the sample) as the label: check data.label_field")
    found.label_field = labels[0].name
    _note_choice(doubts, "the label", labels, "named like a label" if named(labels[0].name, LABEL_NAMES)
                 else "the most filled in, then the fewest values")
    label = profiles[found.label_field]
    if label.present < records:
        doubts.append(f"{records - label.present:,} of {records:,} sampled records have no {found.label_field!r}: "
                      "they are quarantined (missing_label)")

    # Id: named like an id, filled in and unique in every sampled record.
    taken = (found.text_field, found.label_field, found.split_field)
    ids = [p for p in profiles.values() if p.name not in taken and named(p.name, ID_NAMES) and not p.nested]
    unique = [p for p in ids if p.present == records and p.distinct == records]
    unique.sort(key=lambda p: p.name.lower() != "id")
    for p in ids:
        if p not in unique:
            why = "is empty in some records" if p.present < records else "repeats values"
            doubts.append(f"column {p.name!r} {why} in the sample: not used as data.id_field (ids are file:row)")
    if unique:
        found.id_field = unique[0].name
        _note_choice(doubts, "the id", unique, "named id" if found.id_field.lower() == "id" else "the first")


def _note_choice(doubts: list[str], role: str, candidates: list[FieldProfile], why: str) -> None:
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates[:5])
        doubts.append(f"{len(candidates)} columns could be {role}: {names}; chose {candidates[0].name} ({why})")


# --------------------------------------------------------------------------- the config file


def default_name(path: Path) -> str:
    """A config and artifacts name from the data's file name: ``data/My Reviews.csv`` -> ``my-reviews``."""
    name = path.name.lower()
    for suffix in (*TAR_SUFFIXES, ".zip", *(s for suffixes in TABLE_SUFFIXES.values() for s in suffixes)):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^a-z0-9_.-]+", "-", name).strip("-_.").replace("..", ".")
    return name or "data"


def config_data_path(path: Path) -> str:
    """``data.path`` as the config should say it: ``${HAN_DATA_DIR}/...`` inside that folder, else as given,
    with a relative path made relative to the project root (where ``make`` runs the pipeline)."""
    absolute = Path(os.path.abspath(path.expanduser()))
    root = Path(os.path.abspath(data_root()))
    if absolute.is_relative_to(root) and absolute != root:
        return "${HAN_DATA_DIR}/" + absolute.relative_to(root).as_posix()
    if path.expanduser().is_absolute():
        return absolute.as_posix()
    return Path(os.path.relpath(absolute, PROJECT_ROOT)).as_posix()


def config_text(found: Inspection, name: str, data_path: str, config_path: str | None = None) -> str:
    """The YAML of a starting config: ``name``, ``data`` (and ``preprocess`` where the sample asks), each line
    with its why. The CPU settings are the defaults' ``auto``, chosen from the data when it trains."""
    lines = [
        f"# {found.path.name}: written by `python -m pipeline init-config` from {_sampled(found)}.",
        f"# Check it, then: make pipeline CONFIG={config_path or f'configs/{name}.yaml'}",
        "# Only what differs from configs/default.yaml (every key, with its default) is here; its CPU settings",
        "# (length groups, threads, dropout masks, optimizer) are `auto`: chosen from the data (docs/speed-on-a-cpu.md).",
    ]
    body: list[tuple[str, str]] = [
        (f"name: {_scalar(name)}", "outputs go to $HAN_ARTIFACTS_DIR/<name>/<stage>/"),
        ("data:", ""),
        (f"  format: {found.format}", found.format_reason),
        (f"  path: {_scalar(data_path)}", "relative paths are read from where the pipeline runs (make: the project root)"
         if not data_path.startswith(("${", "/")) else ""),
    ]
    if found.split_paths:
        carved = [split for split in ("validation", "test") if split not in found.split_paths]
        body[-1] = ("  path:", "a file per split, named by its split: the dataset's own split"
                    + (f" ({' and '.join(carved)} carved from train by preprocess.split)" if carved else ""))
        body += [(f"    {split}: {_scalar(config_data_path(file))}", "") for split, file in found.split_paths.items()]
    if found.format == "folder":
        own_split = "; <split>/ folders: the dataset's own split" if found.splits.keys() - {"(none)"} else ""
        body[-2] = (body[-2][0], f"{found.format_reason}; label = folder name, id = file path{own_split}")
    else:
        text = found.profiles[found.text_field]
        label = found.profiles[found.label_field]
        body += [
            (f"  text_field: {_scalar(found.text_field)}", f"the longest strings: {text.mean_chars:,.0f} characters on average"),
            (f"  label_field: {_scalar(found.label_field)}", f"{label.distinct:,} values in the sample"),
            (f"  id_field: {_scalar(found.id_field)}", "unique in every sampled record" if found.id_field
             else "no column named like an id is unique: ids are file:row"),
        ]
        if found.split_field:
            body.append((f"  split_field: {_scalar(found.split_field)}",
                         "train/validation/test values: the dataset's own split (preprocess.split unused)"))
    if found.longest_text > DEFAULT_MAX_CHARS:
        limit = -(-found.longest_text // 1_000_000) * 1_000_000
        body.append((f"  max_chars: {limit}", f"the sample's longest text has {found.longest_text:,} characters"))
    if 1 < len(found.labels) <= MAX_LABELS:
        shown = yaml.safe_dump(sorted(found.labels), default_flow_style=True, width=10_000).strip()
        body.append(("  # uncomment to keep only these labels; others are then quarantined (unknown_label):", ""))
        body.append((f"  # labels: {shown}", ""))
    if _mostly_headers(found):
        body += [("preprocess:", ""), ("  drop_header: true", f"{found.with_header:,} sampled texts start with a "
                                       "header block (From:, Subject:, ...), dropped before splitting; false keeps it")]
    width = max((len(text) for text, why in body if why and len(text) < 40), default=30) + 2
    lines += [f"{text.ljust(width) if len(text) < width else text + '  '}# {why}" if why else text for text, why in body]
    return "\n".join(lines) + "\n"


def write_config(path: str | Path, *, name: str | None = None, output: str | Path | None = None,
                 force: bool = False, sample: int = SAMPLE_RECORDS) -> tuple[Inspection, Path]:
    """Inspect ``path`` and write its starting config to ``output`` (default ``configs/<name>.yaml``).

    Refuses to replace an existing file unless ``force``; the file is checked with ``load_config``
    before it takes the place of anything.
    """
    path = Path(path).expanduser()
    name = name or default_name(path)
    try:
        PipelineConfig.model_validate({"name": name})
    except ValidationError as err:
        raise InspectError(f"--name {name!r}: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    output = Path(output) if output is not None else PROJECT_ROOT / "configs" / f"{name}.yaml"
    if output.exists() and not force:
        raise InspectError(f"{output} exists; pass --force to overwrite it, or --output another file")
    found = inspect_data(path, sample)
    shown = output.resolve().relative_to(PROJECT_ROOT) if output.resolve().is_relative_to(PROJECT_ROOT) else output
    text = config_text(found, name, config_data_path(path), str(shown))
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    try:
        partial.write_text(text, encoding="utf-8")
        load_config(partial)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk or a config that does not load leaves nothing behind
        raise
    os.replace(partial, output)
    return found, output


# --------------------------------------------------------------------------- the report


def render(found: Inspection) -> str:
    """What a person should check, one line per finding."""
    out = [f"data        {found.path}", f"format      {found.format} ({found.format_reason})", f"sampled     {_sampled(found)}"]
    if found.format == "folder":
        out.append("label       the class folder's name; id: the file's path")
        if "text" in found.profiles:
            text = found.profiles["text"]
            out.append(f"text        {text.mean_chars:,.0f} characters on average, longest {text.longest:,}; "
                       f"e.g. {_quoted(text.examples(1))}")
    else:
        for role, name in (("text_field", found.text_field), ("label_field", found.label_field),
                           ("id_field", found.id_field), ("split_field", found.split_field)):
            if name is None:
                out.append(f"{role:<12}none")
                continue
            p = found.profiles[name]
            if role == "text_field":
                detail = f"{p.mean_chars:,.0f} characters on average, longest {p.longest:,}"
            else:
                detail = f"{p.distinct:,} values in {p.present:,} records"
            out.append(f"{role:<12}{name!r}: {detail}; e.g. {_quoted(p.examples())}")
        chosen = {found.text_field, found.label_field, found.id_field, found.split_field}
        others = [f"{p.name!r} ({p.distinct:,} values)" for p in found.profiles.values() if p.name not in chosen]
        if others:
            out.append(f"other       {', '.join(others)} (not used)")
    counted = "in the folders" if found.documents_total is not None else "in the sample"
    out.append(f"labels      {len(found.labels):,} {counted}: " + _counts(found.labels))
    if found.split_paths:
        out.append("splits      a file per split: " + ", ".join(f"{split} = {file.name}" for split, file
                                                              in found.split_paths.items()))
    elif found.splits.keys() - {"(none)"}:
        out.append("splits      " + _counts(found.splits) + ("" if found.splits.get("validation")
                                                              else "; validation is carved from train"))
    if found.quarantined:
        out.append("quarantine  preprocess would set aside, in the sample: " + _counts(found.quarantined)
                   + " (README: Quarantine)")
    if found.skipped_files:
        out.append(f"skipped     {found.skipped_files:,} files that are not documents (preprocess lists them in skipped_files.json)")
    for doubt in found.doubts:
        out.append(f"check       {doubt}")
    return "\n".join(out)


def _sampled(found: Inspection) -> str:
    if found.sampled_all:
        return f"all {found.records_sampled:,} records"
    total = f" of {found.documents_total:,}" if found.documents_total is not None else ""
    return f"the first {found.records_sampled:,} records{total}"


def _counts(counter: Counter, k: int = 12) -> str:
    shown = ", ".join(f"{key} {n:,}" for key, n in counter.most_common(k))
    return shown + (f", ... ({len(counter) - k} more)" if len(counter) > k else "")


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _quoted(values: list[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _scalar(value: Any) -> str:
    """``value`` as a YAML scalar: plain when it reads back the same, else double-quoted."""
    if value is None:
        return "null"
    plain = str(value)
    try:
        if yaml.safe_load(plain) == value and "#" not in plain and plain.strip() == plain:
            return plain
    except yaml.YAMLError:
        pass
    return yaml.safe_dump(value, default_style='"', width=10_000).strip().removesuffix("...").strip()
