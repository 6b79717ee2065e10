"""`make data` (pipeline.data.fetch): small archives in the official layouts, served over loopback HTTP."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT, load_config
from pipeline.data import fetch
from pipeline.data.readers import ReadReport, read_documents
from pipeline.data.records import RawDocument

# bbc-fulltext.zip: bbc/<class>/NNN.txt and a README; one article is latin-1, as sport/199 is in the real one.
BBC_MEMBERS = {
    "bbc/README.TXT": b"BBC datasets, fake.",
    "bbc/business/001.txt": b"Shares rise\n\nMarkets rose today.",
    "bbc/business/002.txt": b"Rates held\n\nThe bank held rates.",
    "bbc/sport/001.txt": "Cup win\n\nA \u00a315.8m deal.".encode("latin-1"),
    "bbc/tech/001.txt": b"New phone\n\nIt has a screen.",
    "__MACOSX/bbc/._README.TXT": b"\x00\x05resource fork",
}
# aclImdb_v1.tar.gz: the labelled reviews plus what the layout leaves out (unsup, feature and URL files).
IMDB_MEMBERS = {
    "aclImdb/README": b"Large Movie Review Dataset, fake.",
    "aclImdb/imdb.vocab": b"the\nfilm\n",
    "aclImdb/imdbEr.txt": b"0.1\n",
    "aclImdb/train/pos/0_9.txt": b"A wonderful film.",
    "aclImdb/train/neg/1_2.txt": b"Dreadful.<br /><br />Avoid.",
    "aclImdb/train/unsup/2_0.txt": b"No label here.",
    "aclImdb/train/labeledBow.feat": b"1 0:1\n",
    "aclImdb/train/urls_pos.txt": b"http://www.imdb.com/title/tt0000001/usercomments\n",
    "aclImdb/test/pos/3_10.txt": b"Great acting.",
    "aclImdb/test/neg/4_1.txt": b"Boring plot.",
}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def _sha256sum_digest(files: dict[str, bytes]) -> str:
    """What `find ... | LC_ALL=C sort | xargs sha256sum | sha256sum` prints, written out independently."""
    lines = [f"{hashlib.sha256(files[path]).hexdigest()}  {path}\n" for path in sorted(files)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _source(name: str, archive: bytes, documents: dict[str, bytes]) -> fetch.DatasetSource:
    """The real source with the fake archive's sha256 and content digest pinned instead."""
    return dataclasses.replace(
        fetch.DATASETS[name],
        archive_sha256=hashlib.sha256(archive).hexdigest(),
        content_sha256=_sha256sum_digest(documents),
        document_count=len(documents),
    )


BBC_ZIP = _zip(BBC_MEMBERS)
BBC_DOCUMENTS = {name.removeprefix("bbc/"): data for name, data in BBC_MEMBERS.items()
                 if re.fullmatch(r"bbc/(business|sport|tech)/\d+\.txt", name)}
IMDB_TAR = _tar_gz(IMDB_MEMBERS)
IMDB_DOCUMENTS = {name: data for name, data in IMDB_MEMBERS.items()
                  if re.fullmatch(r"aclImdb/(train|test)/(pos|neg)/\w+\.txt", name)}


class _ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` by name, honours ``Range: bytes=N-``, logs each request; ``cut_after`` breaks one transfer."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ArchiveHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _ArchiveHandler(http.server.BaseHTTPRequestHandler):
    server: _ArchiveServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        wanted = self.headers.get("Range")
        self.server.requests.append((self.path, wanted))
        data = self.server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = int(match[1]) if wanted and (match := re.fullmatch(r"bytes=(\d+)-", wanted)) else 0
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:
            body, self.server.cut_after = body[: self.server.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = _ArchiveServer()
    srv.files.update({"bbc-fulltext.zip": BBC_ZIP, "aclImdb_v1.tar.gz": IMDB_TAR})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _everything_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_fetch_lays_out_both_datasets_where_the_configs_read_them(server, tmp_path, monkeypatch):
    dest = tmp_path / "data"
    bbc = _source("bbc", BBC_ZIP, BBC_DOCUMENTS)
    imdb = _source("imdb", IMDB_TAR, IMDB_DOCUMENTS)
    assert fetch.fetch_dataset(bbc, dest, url=server.url("bbc-fulltext.zip")) is True
    assert fetch.fetch_dataset(imdb, dest, url=server.url("aclImdb_v1.tar.gz")) is True
    assert sorted(p.name for p in dest.iterdir()) == ["aclImdb.tar.gz", "bbc"]  # no download, partial or staging

    monkeypatch.setenv("HAN_DATA_DIR", str(dest))
    bbc_config = load_config(PROJECT_ROOT / "configs" / "bbc.yaml")
    assert bbc_config.resolved_data_path() == dest / "bbc"
    report = ReadReport()
    docs = list(read_documents(bbc_config.data, bbc_config.resolved_data_path(), report))
    assert all(isinstance(d, RawDocument) for d in docs)
    assert sorted((d.id, d.label) for d in docs) == [
        ("business/001", "business"), ("business/002", "business"), ("sport/001", "sport"), ("tech/001", "tech")]
    assert report.skipped_files == ["README.TXT"]  # __MACOSX is left out of the layout
    (latin1,) = [d for d in docs if d.decode_errors]
    assert latin1.id == "sport/001" and "\u00a315.8m" in latin1.text

    imdb_config = load_config(PROJECT_ROOT / "configs" / "imdb.yaml")
    assert imdb_config.resolved_data_path() == dest / "aclImdb.tar.gz"
    report = ReadReport()
    docs = list(read_documents(imdb_config.data, imdb_config.resolved_data_path(), report))
    assert sorted((d.split, d.label, d.id) for d in docs) == [
        ("test", "neg", "test/neg/4_1"), ("test", "pos", "test/pos/3_10"),
        ("train", "neg", "train/neg/1_2"), ("train", "pos", "train/pos/0_9")]  # no unsup
    assert sorted(report.skipped_files) == ["aclImdb/README", "aclImdb/imdb.vocab"]
    with tarfile.open(dest / "aclImdb.tar.gz") as tar:
        names = tar.getnames()
    assert names == sorted(names, key=lambda n: n.split("/")) and "aclImdb/train" in names  # sorted, with folders


def test_second_run_verifies_and_skips_without_downloading(server, tmp_path, capsys):
    bbc = _source("bbc", BBC_ZIP, BBC_DOCUMENTS)
    assert fetch.fetch_dataset(bbc, tmp_path, url=server.url("bbc-fulltext.zip")) is True
    assert len(server.requests) == 1
    assert fetch.fetch_dataset(bbc, tmp_path, url=server.url("bbc-fulltext.zip")) is False
    assert len(server.requests) == 1
    assert "already at" in capsys.readouterr().err


@pytest.mark.parametrize("wrong", ["archive_sha256", "content_sha256"])
def test_a_wrong_digest_is_refused_and_leaves_nothing_behind(server, tmp_path, wrong):
    bbc = dataclasses.replace(_source("bbc", BBC_ZIP, BBC_DOCUMENTS), **{wrong: "0" * 64})
    with pytest.raises(fetch.FetchError, match="0" * 64) as err:
        fetch.fetch_dataset(bbc, tmp_path, url=server.url("bbc-fulltext.zip"))
    assert "nothing was installed" in str(err.value)
    assert _everything_under(tmp_path) == []


def test_an_unreachable_source_fails_fast_with_what_to_do(tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/bbc-fulltext.zip"
    monkeypatch.setenv("HAN_BBC_URL", url)
    started = time.monotonic()
    assert fetch.main(["--datasets", "bbc", "--dest", str(tmp_path)]) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert f"cannot download {url}" in err
    assert "HAN_BBC_URL=file:///" in err and str(tmp_path / "downloads" / "bbc-fulltext.zip") in err
    assert _everything_under(tmp_path) == []


def test_a_cut_download_is_kept_and_resumed(server, tmp_path):
    bbc = _source("bbc", BBC_ZIP, BBC_DOCUMENTS)
    half = len(BBC_ZIP) // 2
    server.cut_after = half
    with pytest.raises(fetch.FetchError, match="the next run resumes"):
        fetch.fetch_dataset(bbc, tmp_path, url=server.url("bbc-fulltext.zip"))
    assert _everything_under(tmp_path) == ["downloads", "downloads/bbc-fulltext.zip.partial"]
    assert fetch.fetch_dataset(bbc, tmp_path, url=server.url("bbc-fulltext.zip")) is True
    assert server.requests[-1] == ("/bbc-fulltext.zip", f"bytes={half}-")
    assert _everything_under(tmp_path / "bbc") == [
        "README.TXT", "business", "business/001.txt", "business/002.txt", "sport", "sport/001.txt", "tech",
        "tech/001.txt"]


def test_a_file_url_serves_as_a_mirror(tmp_path, monkeypatch):
    archive = tmp_path / "mirror" / "bbc.zip"
    archive.parent.mkdir()
    archive.write_bytes(BBC_ZIP)
    monkeypatch.setenv("HAN_BBC_URL", archive.as_uri())
    bbc = _source("bbc", BBC_ZIP, BBC_DOCUMENTS)
    assert fetch.source_url(bbc) == archive.as_uri()
    assert fetch.fetch_dataset(bbc, tmp_path / "data") is True
    assert (tmp_path / "data" / "bbc" / "tech" / "001.txt").read_bytes() == BBC_MEMBERS["bbc/tech/001.txt"]


@pytest.mark.parametrize("name, archive", [
    ("bbc", _zip({**BBC_MEMBERS, "bbc/../../evil.txt": b"outside"})),
    ("imdb", _tar_gz(IMDB_MEMBERS, links={"aclImdb/train/pos/5_9.txt": "/etc/passwd"})),
])
def test_members_leading_outside_or_linking_are_refused(server, tmp_path, name, archive):
    source = _source(name, archive, BBC_DOCUMENTS if name == "bbc" else IMDB_DOCUMENTS)
    server.files[source.archive_name] = archive
    with pytest.raises(fetch.FetchError, match="points outside|link"):
        fetch.fetch_dataset(source, tmp_path / "data", url=server.url(source.archive_name))
    assert _everything_under(tmp_path) == ["data"]


def test_other_content_at_the_target_is_kept_unless_forced(server, tmp_path):
    (tmp_path / "bbc" / "business").mkdir(parents=True)
    (tmp_path / "bbc" / "business" / "mine.txt").write_text("my own corpus")
    bbc = _source("bbc", BBC_ZIP, BBC_DOCUMENTS)
    with pytest.raises(fetch.FetchError, match="--force"):
        fetch.fetch_dataset(bbc, tmp_path, url=server.url("bbc-fulltext.zip"))
    assert (tmp_path / "bbc" / "business" / "mine.txt").exists() and server.requests == []
    assert fetch.fetch_dataset(bbc, tmp_path, url=server.url("bbc-fulltext.zip"), force=True) is True
    assert not (tmp_path / "bbc" / "business" / "mine.txt").exists()
    assert fetch.layout_digest(bbc, tmp_path / "bbc") == (bbc.content_sha256, 4)


@pytest.mark.real_data
def test_the_pinned_content_digests_match_the_shared_datasets(shared_data):
    """The digests `make data` checks are those of the copies every result here was measured on (~2-4 s)."""
    for name, path in (("bbc", shared_data / "bbc"), ("imdb", shared_data / "aclImdb.tar.gz")):
        source = fetch.DATASETS[name]
        assert fetch.layout_digest(source, path) == (source.content_sha256, source.document_count), name
