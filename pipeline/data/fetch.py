"""Fetch BBC News and IMDB from their public sources into ``HAN_DATA_DIR``, laid out as the configs read them.

Each archive is downloaded to ``<dest>/downloads/<name>.partial`` (resumed where the server allows it)
and checked against its pinned sha256; the files the layout keeps are read from it and checked against a
digest of the documents' content, written beside ``data.path`` and only then renamed to it: a failed or
interrupted fetch never leaves a half dataset where ``configs/bbc.yaml`` or ``configs/imdb.yaml`` look.

    python -m pipeline.data.fetch [--datasets bbc,imdb] [--dest DIR] [--force]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import io
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from pipeline.config import data_root

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0  # per connection attempt and per read: a dead network fails instead of hanging
MAX_MEMBER_BYTES = 16 << 20  # the largest file kept (IMDB's vocabulary) is 0.8 MB; refuse a decompression bomb
PROGRESS_EVERY_S = 2.0
# What a damaged or truncated archive raises while it is read.
ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError)


class FetchError(Exception):
    """A dataset could not be fetched or verified; the message says which, where, and what to do."""


@dataclass(frozen=True)
class DatasetSource:
    """Where one dataset comes from and what it must hold once laid out.

    ``documents`` matches the layout's paths (after ``prefix`` is dropped from the archive's member
    names) of the files the config's reader takes as documents; ``content_sha256`` is the sha256 of
    their ``sha256sum`` manifest (``<sha256>  <path>`` lines sorted by path), so it is independent of
    how the files are packed. ``extras`` are other files kept (a README); every other member is left out.
    """

    name: str
    url: str
    url_env: str
    archive_name: str
    archive_sha256: str | None
    prefix: str
    documents: str
    extras: tuple[str, ...]
    document_count: int
    content_sha256: str
    target: str  # data.path relative to HAN_DATA_DIR: a folder, or a .tar.gz holding the layout


DATASETS = {
    "bbc": DatasetSource(
        name="bbc",
        url="http://mlg.ucd.ie/files/datasets/bbc-fulltext.zip",
        url_env="HAN_BBC_URL",
        archive_name="bbc-fulltext.zip",
        # The UCD site publishes no checksum. Pinned as stated by barrykooij/related-posts-for-wp,
        # scripts/quality/fetch-corpora.sh (commit e465c3cf), which checks this URL against it.
        archive_sha256="a351031a62325b3d7ff13146eeb035c22feca8290913b5183d1ff3be35109495",
        prefix="bbc/",
        documents=r"(business|entertainment|politics|sport|tech)/[^/]+\.txt",
        extras=("README.TXT",),
        document_count=2225,
        # Computed from ../shared/data/bbc, the copy every BBC result in this repository was measured on:
        # cd bbc && find . -path './*/*.txt' | cut -c3- | LC_ALL=C sort | xargs sha256sum | sha256sum
        content_sha256="f67e4756a902a405f3eaa5cd87da7013917ad3bc451abfa9f42d9f3ea3a17824",
        target="bbc",
    ),
    "imdb": DatasetSource(
        name="imdb",
        url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        url_env="HAN_IMDB_URL",
        archive_name="aclImdb_v1.tar.gz",
        # Stanford publishes no checksum; the same sha256 is pinned by tensorflow-datasets (imdb_reviews),
        # Julia's MLDatasets/CorpusLoaders and gomlx/gomlx examples/imdb/imdb.go.
        archive_sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
        prefix="",
        # The labelled reviews only: train/unsup (50k unlabelled), the .feat files and urls_*.txt are left out.
        documents=r"aclImdb/(train|test)/(neg|pos)/[^/]+\.txt",
        extras=("aclImdb/README", "aclImdb/imdb.vocab"),
        document_count=50_000,
        # Computed from ../shared/data/aclImdb.tar.gz (extract it, then):
        # find aclImdb -name '*.txt' | LC_ALL=C sort | xargs sha256sum | sha256sum
        content_sha256="b155ae18c4016500d64b7ea091f3f04c4ea9e702ab3bdb2b4aa0effbd4da11c6",
        target="aclImdb.tar.gz",
    ),
}


# ------------------------------------------------------------------------- content digests


def content_digest(documents: Iterable[tuple[str, bytes]]) -> tuple[str, int]:
    """The sha256 of the ``sha256sum`` manifest of ``(path, bytes)`` pairs, and how many there were."""
    sums = {path: hashlib.sha256(data).hexdigest() for path, data in documents}
    manifest = "".join(f"{sums[path]}  {path}\n" for path in sorted(sums))
    return hashlib.sha256(manifest.encode()).hexdigest(), len(sums)


def layout_digest(source: DatasetSource, path: Path) -> tuple[str, int]:
    """``content_digest`` of the documents in a laid-out dataset: a folder, or a tar archive of one."""
    pattern = re.compile(source.documents)
    if path.is_dir():
        files = (p for p in path.rglob("*") if p.is_file())
        return content_digest(
            (rel, p.read_bytes()) for p in files if pattern.fullmatch(rel := p.relative_to(path).as_posix())
        )
    try:
        with tarfile.open(path, "r:*") as tar:
            return content_digest(
                (m.name, tar.extractfile(m).read()) for m in tar if m.isfile() and pattern.fullmatch(m.name)
            )
    except ARCHIVE_ERRORS as err:
        raise FetchError(f"{source.name}: {path} is not a readable tar archive ({err})") from None


def _check_content(source: DatasetSource, path: Path) -> None:
    digest, count = layout_digest(source, path)
    if count != source.document_count or digest != source.content_sha256:
        raise FetchError(
            f"{source.name}: the documents in {path} are not the expected ones: {count:,} documents with content "
            f"digest {digest}, expected {source.document_count:,} with {source.content_sha256}"
        )


# ------------------------------------------------------------------------- downloading


def source_url(source: DatasetSource) -> str:
    """The URL to fetch from: ``$HAN_<NAME>_URL`` when set (a mirror, or ``file:///...``), else the public one."""
    return os.environ.get(source.url_env) or source.url


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def download(url: str, partial: Path, label: str, stream: TextIO, timeout: float = TIMEOUT_S) -> None:
    """Download ``url`` into ``partial``, continuing a previous ``partial`` when the server honours a Range request.

    Raises ``urllib.error.URLError``, ``OSError`` or ``http.client.HTTPException`` when the source cannot be
    reached or the transfer breaks (the bytes so far stay in ``partial`` for the next try).
    """
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after what we hold: the partial file is complete (the sha256 decides)
            return
        raise
    with response:
        length = response.headers.get("Content-Length")
        resumed = have > 0 and getattr(response, "status", None) == 206
        start = have if resumed else 0
        total = start + int(length) if length and length.isdigit() else None
        done = start
        if resumed:
            print(f"{label}: resuming at {_megabytes(start)}", file=stream, flush=True)
        last = time.monotonic()
        with partial.open("ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                done += len(chunk)
                if time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    print(f"{label}: {_progress(done, total)}", file=stream, flush=True)
    if total is not None and done < total:  # http.client ends a cut-off body quietly
        raise ConnectionError(f"the connection closed after {_progress(done, total)}")
    print(f"{label}: {_progress(done, total)}, done", file=stream, flush=True)


def _progress(done: int, total: int | None) -> str:
    if not total:
        return _megabytes(done)
    return f"{_megabytes(done)} of {_megabytes(total)} ({100 * done / total:.0f}%)"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------- archives


def _check_member_name(name: str, archive: Path) -> None:
    """Refuse an archive whose member would land outside the folder it is extracted into."""
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
        raise FetchError(f"{archive}: member {name!r} points outside the extraction folder; refusing the archive")


def _members(archive: Path) -> Iterator[tuple[str, str, int, float, Callable[[], bytes]]]:
    """``(name, kind, size, mtime, read)`` for each member; kind is ``file``, ``dir`` or ``other``."""
    if archive.name.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    kind = "dir" if info.is_dir() else "other" if is_link else "file"
                    mtime = time.mktime((*info.date_time, 0, 0, -1))
                    yield info.filename, kind, info.file_size, mtime, lambda info=info: zf.read(info)
        except ARCHIVE_ERRORS as err:
            raise FetchError(f"{archive}: not a readable zip archive ({err})") from None
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                kind = "file" if m.isfile() else "dir" if m.isdir() else "other"
                yield m.name, kind, m.size, float(m.mtime), lambda m=m: tar.extractfile(m).read()
    except ARCHIVE_ERRORS as err:
        raise FetchError(f"{archive}: not a readable tar archive ({err})") from None


@dataclass(frozen=True)
class LayoutFile:
    data: bytes
    mtime: float


def read_layout(source: DatasetSource, archive: Path) -> dict[str, LayoutFile]:
    """The archive's documents and extras by layout path, read into memory (9 MB for BBC, 71 MB for IMDB).

    Held in memory rather than on disk: writing and deleting IMDB's 50,000 small files took 95 s here.
    """
    pattern = re.compile(source.documents)
    files: dict[str, LayoutFile] = {}
    for name, kind, size, mtime, read in _members(archive):
        _check_member_name(name, archive)
        if not name.startswith(source.prefix):
            continue
        rel = name[len(source.prefix):].rstrip("/")
        if not (pattern.fullmatch(rel) or rel in source.extras):
            continue
        if kind != "file":
            raise FetchError(f"{archive}: {name} is a {'folder' if kind == 'dir' else 'link or special file'}, "
                             "expected a regular file; refusing the archive")
        if size > MAX_MEMBER_BYTES:
            raise FetchError(f"{archive}: {name} unpacks to {size:,} bytes, more than any file of this dataset "
                             f"({MAX_MEMBER_BYTES:,}); refusing the archive")
        try:
            files[rel] = LayoutFile(read(), mtime)
        except ARCHIVE_ERRORS as err:
            raise FetchError(f"{archive}: cannot read {name} ({err}); refusing the archive") from None
    return files


def _check_layout(source: DatasetSource, files: dict[str, LayoutFile], archive: Path) -> None:
    pattern = re.compile(source.documents)
    digest, count = content_digest((rel, f.data) for rel, f in files.items() if pattern.fullmatch(rel))
    if count != source.document_count or digest != source.content_sha256:
        shown = ", ".join(sorted(files)[:3]) or "(none)"
        raise FetchError(
            f"{source.name}: the documents in {archive} are not the expected ones: {count:,} documents with content "
            f"digest {digest}, expected {source.document_count:,} with {source.content_sha256} (kept files: "
            f"{shown}{', ...' if len(files) > 3 else ''}); nothing was installed"
        )


def write_folder(files: dict[str, LayoutFile], root: Path) -> None:
    for rel, file in files.items():
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(file.data)
        os.utime(out, (file.mtime, file.mtime))


def write_tar(files: dict[str, LayoutFile], out: Path) -> None:
    """``files`` as a gzipped tar with their folders, in sorted order as the shared copy is, root-owned."""
    folders = {str(parent) for rel in files for parent in PurePosixPath(rel).parents if str(parent) != "."}
    newest = max((f.mtime for f in files.values()), default=0.0)
    with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel in sorted(folders | set(files), key=lambda rel: PurePosixPath(rel).parts):
            info = tarfile.TarInfo(rel)
            info.uname = info.gname = "root"
            if rel in files:
                info.size, info.mtime, info.mode = len(files[rel].data), int(files[rel].mtime), 0o644
                tar.addfile(info, io.BytesIO(files[rel].data))
            else:
                info.type, info.mtime, info.mode = tarfile.DIRTYPE, int(newest), 0o755
                tar.addfile(info)


# ------------------------------------------------------------------------- one dataset


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _manual_hint(source: DatasetSource, url: str, archive: Path) -> str:
    return (f"Without network: download {url} by hand (elsewhere), then put it at {archive} or set "
            f"{source.url_env}=file:///path/to/{source.archive_name}, and run `make data` again.")


def fetch_dataset(source: DatasetSource, dest: Path, url: str | None = None, force: bool = False,
                  stream: TextIO | None = None) -> bool:
    """Lay ``source`` out under ``dest``; True when it was fetched, False when it was already in place and verified.

    An existing ``dest/<target>`` with other content is an error unless ``force``, which replaces it.
    Raises ``FetchError`` with what went wrong and what to do; on any failure ``dest/<target>`` is as it was.
    """
    stream = stream or sys.stderr
    url = url or source_url(source)
    dest = Path(dest)
    target = dest / source.target
    if target.exists():
        try:
            digest, count = layout_digest(source, target)
        except FetchError:
            digest, count = "(unreadable)", 0
        if count == source.document_count and digest == source.content_sha256:
            print(f"{source.name}: already at {target} ({count:,} documents, content verified)", file=stream)
            return False
        if not force:
            raise FetchError(
                f"{source.name}: {target} exists but is not the expected dataset ({count:,} documents with content "
                f"digest {digest}, expected {source.document_count:,} with {source.content_sha256}); move it away, "
                "or run with --force to replace it"
            )
    downloads = dest / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / source.archive_name
    try:
        downloaded = _obtain_archive(source, url, archive, stream)
        try:
            _install(source, archive, target, stream)
        except FetchError:
            if downloaded:  # it does not hold this dataset: never use it again
                archive.unlink()
            raise
        archive.unlink()
    finally:
        if not any(downloads.iterdir()):
            downloads.rmdir()
    print(f"{source.name}: {source.document_count:,} documents verified, ready at {target}", file=stream, flush=True)
    return True


def _obtain_archive(source: DatasetSource, url: str, archive: Path, stream: TextIO) -> bool:
    """Download ``archive`` unless it is already there (put there by hand, or by a run cut short), and verify it.

    True when it was downloaded by this call.
    """
    if archive.exists():
        print(f"{source.name}: using {archive}", file=stream, flush=True)
        if source.archive_sha256 is not None and (actual := file_sha256(archive)) != source.archive_sha256:
            raise FetchError(f"{source.name}: {archive} is not the expected archive: sha256 {actual}, expected "
                             f"{source.archive_sha256}; replace or remove it")
        return False
    partial = archive.with_name(archive.name + ".partial")
    print(f"{source.name}: downloading {url} to {partial}", file=stream, flush=True)
    try:
        download(url, partial, source.name, stream)
    except urllib.error.HTTPError as err:
        raise FetchError(f"{source.name}: {url} answered HTTP {err.code} {err.reason}. "
                         f"{_manual_hint(source, url, archive)}") from None
    except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
        size = partial.stat().st_size if partial.exists() else 0
        kept = f" ({_megabytes(size)} kept in {partial}: the next run resumes)" if size else ""
        raise FetchError(f"{source.name}: cannot download {url}: {getattr(err, 'reason', err)}{kept}. "
                         f"{_manual_hint(source, url, archive)}") from None
    if source.archive_sha256 is None:
        print(f"{source.name}: no published sha256 for this archive: its documents' content decides", file=stream)
    elif (actual := file_sha256(partial)) != source.archive_sha256:
        partial.unlink()  # a wrong file must not be resumed or reused
        raise FetchError(f"{source.name}: {url} is not the expected archive: sha256 {actual}, expected "
                         f"{source.archive_sha256}; it was deleted and nothing was installed")
    else:
        print(f"{source.name}: archive sha256 verified", file=stream, flush=True)
    os.replace(partial, archive)
    return True


def _install(source: DatasetSource, archive: Path, target: Path, stream: TextIO) -> None:
    """Read the layout from ``archive``, verify its documents, write it beside ``target``, then move it there."""
    files = read_layout(source, archive)
    _check_layout(source, files, archive)
    print(f"{source.name}: {source.document_count:,} documents, content digest verified", file=stream, flush=True)
    staging = target.with_name(f".{target.name}.partial")  # same folder: the final move is a rename
    _remove(staging)
    try:
        if target.name.endswith((".tar.gz", ".tgz")):
            write_tar(files, staging)
            _check_content(source, staging)  # the archive the config will read, read back
            os.replace(staging, target)
        else:
            write_folder(files, staging)
            old = target.with_name(f".{target.name}.old")
            if target.exists():
                _remove(old)
                os.replace(target, old)
            os.replace(staging, target)
            _remove(old)
    finally:
        _remove(staging)


# ------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.data.fetch",
        description="Download BBC News and IMDB, check their sha256 and lay them out where configs/bbc.yaml and "
                    "configs/imdb.yaml read them. Sources: $HAN_BBC_URL, $HAN_IMDB_URL (a mirror or file:///...) "
                    "override the public URLs.",
    )
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated, from {', '.join(DATASETS)} (default: all)")
    parser.add_argument("--dest", type=Path, default=None,
                        help="dataset root (default: $HAN_DATA_DIR, else data/ in the project)")
    parser.add_argument("--force", action="store_true",
                        help="replace a dataset folder or archive whose content is not the expected one")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATASETS]
    if unknown or not names:
        parser.error(f"--datasets: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(DATASETS)}")
    dest = args.dest or data_root()
    failed = 0
    for name in names:
        try:
            fetch_dataset(DATASETS[name], dest, force=args.force)
        except FetchError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
