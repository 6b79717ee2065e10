"""The bad-input table (docs/bad-inputs.md), rows B50-B64: archives, files that are not what they seem, values that parse
but make no sense.

As in ``test_bad_inputs.py``, each test runs the real preprocess stage (through the CLI) on tiny inputs made
here, and checks the quarantine line and that every input is kept or quarantined. Where a row is about memory,
time or a hang, the stage runs in a subprocess (``RUNNER``) that reports its peak memory growth and time, under
a timeout.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT
from tests.stages.conftest import set_args

GOOD = [{"id": f"{label}{i}", "text": f"{word} story number {i}. The {word.lower()}s grow well in spring.",
         "label": label} for label, word in (("a", "Apple"), ("b", "Boat")) for i in range(12)]
GOOD_IDS = sorted(f"{row['label']}/{row['id']}" for row in GOOD)
MiB = 1024 * 1024
GiB = 1024 * MiB

# Runs the CLI in a fresh process; prints its exit code, seconds and peak resident memory growth as the last line.
RUNNER = """
import json, resource, sys, time
import mlflow, pipeline.data.readers, pipeline.stages.preprocess, pipeline.data.text, pipeline.tracking  # before measuring
from pipeline.__main__ import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
code = main(sys.argv[1:])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"code": code, "seconds": time.perf_counter() - started, "rss_growth_mb": grown / 1024}))
"""


def settings(name: str, data: Path, fmt: str, *overrides: str) -> list[str]:
    return set_args([f"name={name}", f"data.format={fmt}", f"data.path={data}", "preprocess.max_quarantine_fraction=0.5",
                     "preprocess.vocab.min_count=1", *overrides])


def preprocess(capsys, name: str, data: Path, fmt: str, *overrides: str) -> tuple[int, str]:
    code = main(["preprocess", *settings(name, data, fmt, *overrides)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def preprocess_in_subprocess(name: str, data: Path, fmt: str, *overrides: str, timeout: float = 120,
                             **run) -> tuple[dict, str]:
    """The stage in its own process (killed after ``timeout`` s): its exit code, seconds, memory growth; and output."""
    run.setdefault("cwd", PROJECT_ROOT)
    run.setdefault("env", os.environ | {"PYTHONPATH": str(PROJECT_ROOT)})
    done = subprocess.run([sys.executable, "-c", RUNNER, "preprocess", *settings(name, data, fmt, *overrides)],
                          capture_output=True, text=True, timeout=timeout, **run)
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


def outputs(artifacts: Path, name: str) -> Path:
    return artifacts / name / "preprocess"


def quarantined(artifacts: Path, name: str, count_in: int, kept: int) -> dict[str, dict]:
    """The quarantine lines by source, after checking that input = kept + quarantined."""
    out = outputs(artifacts, name)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["input"], counts["kept"]) == (count_in, kept), counts
    assert counts["input"] == counts["kept"] + counts["quarantined"]
    lines = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    return {line["source"]: line for line in lines}


def kept_documents(artifacts: Path, name: str) -> list[dict]:
    out = outputs(artifacts, name)
    return [json.loads(line) for split in ("train", "validation", "test")
            for line in (out / f"{split}.documents.jsonl").read_text().splitlines()]


def skipped_files(artifacts: Path, name: str) -> list[str]:
    path = outputs(artifacts, name) / "skipped_files.json"
    return json.loads(path.read_text()) if path.exists() else []


def class_folders(folder: Path) -> Path:
    for row in GOOD:
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        (folder / row["label"] / f"{row['id']}.txt").write_text(row["text"], encoding="utf-8")
    return folder


def corpus_members(top: str = "corpus") -> list[tuple[str, bytes]]:
    return [(f"{top}/{row['label']}/{row['id']}.txt", row["text"].encode()) for row in GOOD]


# ----------------------------------------------------------------------------- archives written by hand
# A gigabyte of zeros, compressed, is made in milliseconds: after a full flush deflate starts afresh, so
# one compressed mebibyte of zeros repeated is a valid stream of many.

def zeros_deflate(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes (a whole number of MiB), and its CRC-32."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc = 0
    for _ in range(size // MiB):
        crc = zlib.crc32(bytes(MiB), crc)
    return block * (size // MiB) + final.compress(b"") + final.flush(), crc


def write_zip(path: Path, members: list[tuple]) -> Path:
    """A zip of ``(name, data)`` (stored) and ``(name, method, compressed, crc, size, mode, flags)`` members."""
    local, central = bytearray(), bytearray()
    for member in members:
        if len(member) == 2:
            name, data = member
            member = (name, 0, data, zlib.crc32(data), len(data), stat.S_IFREG | 0o644, 0)
        name, method, data, crc, size, mode, flags = member
        raw = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x0314, 20, flags, method, 0, 33, crc, len(data), size,
                               len(raw), 0, 0, 0, 0, mode << 16, len(local)) + raw
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 33, crc, len(data), size, len(raw), 0)
        local += raw + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def tar_header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info.tobuf(format=tarfile.GNU_FORMAT)


def tar_file(name: str, data: bytes) -> bytes:
    return tar_header(name, len(data)) + data + bytes(-len(data) % 512)


def gzip_member(deflate: bytes, crc: int, size: int) -> bytes:
    """One gzip member around a raw deflate stream (a .gz file may hold several, read one after the other)."""
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflate + struct.pack("<2L", crc, size % 2**32)


def tar_gz_with_zeros(path: Path, before: bytes, big: str, size: int, after: bytes) -> Path:
    """A .tar.gz: the tar bytes ``before``, a member ``big`` of ``size`` zero bytes, then ``after`` and the end."""
    deflate, crc = zeros_deflate(size)
    path.write_bytes(gzip.compress(before + tar_header(big, size)) + gzip_member(deflate, crc, size)
                     + gzip.compress(after + bytes(1024)))
    return path


# ----------------------------------------------------------------------------- archives


@pytest.mark.bad_input("B50")
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_gigabyte_member_in_a_small_archive_is_too_large_and_never_held_in_memory(env, kind):
    big = "corpus/a/zeros.txt"
    members = corpus_members()
    if kind == "zip":
        deflate, crc = zeros_deflate(GiB)
        data = write_zip(env / "b50.zip", [*members[:12], (big, 8, deflate, crc, GiB, stat.S_IFREG | 0o644, 0),
                                           *members[12:]])
    else:
        data = tar_gz_with_zeros(env / "b50.tar.gz", b"".join(tar_file(*m) for m in members[:12]), big, GiB,
                                 b"".join(tar_file(*m) for m in members[12:]))
    assert data.stat().st_size < 2 * MiB
    result, out = preprocess_in_subprocess(f"b50-{kind}", data, "folder")
    assert result["code"] == 0 and "Traceback" not in out, out
    assert result["rss_growth_mb"] < 200, result  # the member was read whole before: over 3 GB
    assert result["seconds"] < 60, result
    lines = quarantined(env / "artifacts", f"b50-{kind}", len(GOOD) + 1, len(GOOD))
    line = lines[f"{data}!{big}"]
    assert line["reason"] == "too_large" and f"{GiB:,} bytes" in line["detail"] and "data.max_chars" in line["detail"]
    assert (line["id"], line["label"]) == ("a/zeros", "a")


@pytest.mark.bad_input("B51")
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_decompression_bomb_stops_at_max_archive_bytes(env, capsys, kind):
    # 30 members of 8 MiB of zeros each, in 250 kB: with a 50 MB allowance, it stops before reading them.
    deflate, crc = zeros_deflate(8 * MiB)
    names = [f"corpus/{'ab'[i % 2]}/bomb{i}.txt" for i in range(30)]
    if kind == "zip":
        data = write_zip(env / "b51.zip", [(name, 8, deflate, crc, 8 * MiB, stat.S_IFREG | 0o644, 0) for name in names])
    else:
        data = env / "b51.tar.gz"
        data.write_bytes(b"".join(gzip.compress(tar_header(name, 8 * MiB)) + gzip_member(deflate, crc, 8 * MiB)
                                  for name in names) + gzip.compress(bytes(1024)))
    code, out = preprocess(capsys, f"b51-{kind}", data, "folder", "data.max_archive_bytes=50000000")
    assert code == 2 and "Traceback" not in out
    assert "data.max_archive_bytes (50,000,000)" in out and "decompression bomb" in out and str(data) in out
    assert not outputs(env / "artifacts", f"b51-{kind}").exists()


UNSAFE = ["an absolute path", "leads out of the archive ('..')"]


@pytest.mark.bad_input("B52")
def test_unsafe_zip_members_never_change_the_layout(env, capsys):
    link = ("corpus/a/passwd.txt", 0, b"/etc/passwd", zlib.crc32(b"/etc/passwd"), 11, stat.S_IFLNK | 0o777, 0)
    data = write_zip(env / "b52.zip", [*corpus_members(), ("../evil.txt", b"Outside story. It was read."),
                                       ("/abs/a/x.txt", b"Absolute story. It was read."), link,
                                       ("../notes.md", b"notes")])
    code, out = preprocess(capsys, "b52", data, "folder")
    assert code == 0, out
    lines = quarantined(env / "artifacts", "b52", len(GOOD) + 3, len(GOOD))
    assert sorted(doc["id"] for doc in kept_documents(env / "artifacts", "b52")) == GOOD_IDS  # corpus/ stripped
    assert {line["reason"] for line in lines.values()} == {"unparsable"}
    assert "leads out of the archive ('..')" in lines[f"{data}!../evil.txt"]["detail"]
    assert "an absolute path" in lines[f"{data}!/abs/a/x.txt"]["detail"]
    assert "a symbolic link" in lines[f"{data}!corpus/a/passwd.txt"]["detail"]
    assert lines[f"{data}!corpus/a/passwd.txt"]["label"] == "a"
    (notes,) = skipped_files(env / "artifacts", "b52")
    assert notes.startswith("../notes.md (") and "leads out of the archive" in notes


@pytest.mark.bad_input("B52")
def test_unsafe_tar_members_never_change_the_layout(env, capsys):
    tar = b"".join([*(tar_file(*m) for m in corpus_members()), tar_file("../evil.txt", b"Outside story. Read."),
                    tar_header("corpus/b/passwd.txt", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
                    tar_header("corpus/b/again.txt", kind=tarfile.LNKTYPE, linkname="corpus/a/a0.txt"),
                    tar_header("corpus/a/pipe.txt", kind=tarfile.FIFOTYPE),
                    tar_header("corpus/a/null.txt", kind=tarfile.CHRTYPE), bytes(1024)])
    data = env / "b52.tar.gz"
    data.write_bytes(gzip.compress(tar))
    code, out = preprocess(capsys, "b52-tar", data, "folder")
    assert code == 0, out
    lines = quarantined(env / "artifacts", "b52-tar", len(GOOD) + 5, len(GOOD) + 1)
    kept = {doc["id"]: doc for doc in kept_documents(env / "artifacts", "b52-tar")}
    assert sorted(kept) == sorted([*GOOD_IDS, "b/again"])  # a hard link to a file of the archive is that file
    assert sorted(lines) == sorted(f"{data}!{name}" for name in
                                   ("../evil.txt", "corpus/b/passwd.txt", "corpus/a/pipe.txt", "corpus/a/null.txt"))
    assert "leads out of the archive" in lines[f"{data}!../evil.txt"]["detail"]
    assert "a symbolic link to /etc/passwd" in lines[f"{data}!corpus/b/passwd.txt"]["detail"]
    assert "a FIFO" in lines[f"{data}!corpus/a/pipe.txt"]["detail"]
    assert "a character device" in lines[f"{data}!corpus/a/null.txt"]["detail"]


@pytest.mark.bad_input("B53")
def test_a_corrupt_zip_member_is_quarantined_and_the_rest_read(env, capsys):
    text = b"Apple story. Its bytes were damaged."
    bad_crc = ("corpus/a/crc.txt", 0, text, zlib.crc32(text) ^ 1, len(text), stat.S_IFREG | 0o644, 0)
    bad_deflate = ("corpus/a/deflate.txt", 8, b"\xff" * 40, 0, 100, stat.S_IFREG | 0o644, 0)
    encrypted = ("corpus/b/secret.txt", 0, text, zlib.crc32(text), len(text), stat.S_IFREG | 0o644, 1)
    data = write_zip(env / "b53.zip", [*corpus_members(), bad_crc, bad_deflate, encrypted])
    code, out = preprocess(capsys, "b53", data, "folder")
    assert code == 0 and "Traceback" not in out, out
    lines = quarantined(env / "artifacts", "b53", len(GOOD) + 3, len(GOOD))
    assert {line["reason"] for line in lines.values()} == {"unparsable"}
    assert "Bad CRC-32" in lines[f"{data}!corpus/a/crc.txt"]["detail"]
    assert "decompressing" in lines[f"{data}!corpus/a/deflate.txt"]["detail"]  # zlib's "Error -3 while decompressing"
    assert "encrypted" in lines[f"{data}!corpus/b/secret.txt"]["detail"]


@pytest.mark.bad_input("B54")
@pytest.mark.parametrize("mode", ["gz", "xz"])
def test_a_truncated_compressed_tar_keeps_what_comes_before_the_cut(env, capsys, mode):
    # Distinct texts of a few kB each, alternating labels, so that the cut falls in the middle of the documents.
    import random

    words = random.Random(54).choices(["apple", "boat", "spring", "river", "stone", "cloud", "green", "story"], k=6000)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{mode}") as tar:
        for i in range(24):
            body = f"Story {i}. " + " ".join(words[i * 250:(i + 1) * 250]) + "."
            info = tarfile.TarInfo(f"corpus/{'ab'[i % 2]}/doc{i}.txt")
            info.size = len(body.encode())
            tar.addfile(info, io.BytesIO(body.encode()))
    data = env / f"b54.tar.{mode}"
    data.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    code, out = preprocess(capsys, f"b54-{mode}", data, "folder")
    assert code == 0 and "Traceback" not in out, out
    manifest = json.loads((outputs(env / "artifacts", f"b54-{mode}") / "manifest.json").read_text())
    counts = manifest["counts"]
    assert 2 <= counts["kept"] < 24 and counts["quarantined"] == 1 and counts["input"] == counts["kept"] + 1
    (line,) = quarantined(env / "artifacts", f"b54-{mode}", counts["input"], counts["kept"]).values()
    assert line["reason"] == "unparsable" and line["source"].startswith(f"{data}!corpus/")
    assert "cannot read" in line["detail"] or "cannot be read past this member" in line["detail"]


# ----------------------------------------------------------------------------- files that are not what they seem


@pytest.mark.bad_input("B55")
def test_a_link_out_of_the_data_folder_is_never_followed(env, capsys, tmp_path):
    folder = class_folders(env / "b55")
    secret = tmp_path / "secret.txt"
    secret.write_text("Secret story. It lives outside the data folder.")
    (folder / "a" / "outside.txt").symlink_to(secret)
    (folder / "a" / "zero.txt").symlink_to("/dev/zero")  # read, it would never end
    (folder / "b" / "inside.txt").symlink_to(folder / "a" / "a0.txt")  # inside the data folder: read as that file
    code, out = preprocess(capsys, "b55", folder, "folder")
    assert code == 0, out
    lines = quarantined(env / "artifacts", "b55", len(GOOD) + 3, len(GOOD) + 1)
    assert sorted(lines) == [f"{folder}/a/outside.txt", f"{folder}/a/zero.txt"]
    assert f"a symbolic link to {secret}, outside data.path" in lines[f"{folder}/a/outside.txt"]["detail"]
    assert "outside data.path" in lines[f"{folder}/a/zero.txt"]["detail"]
    kept = kept_documents(env / "artifacts", "b55")
    assert "b/inside" in {doc["id"] for doc in kept}
    assert not any("Secret" in " ".join(doc["sentences"]) for doc in kept)


@pytest.mark.bad_input("B56")
def test_links_to_folders_loops_and_dangling_links_end_and_are_listed(env, capsys):
    folder = class_folders(env / "b56")
    (folder / "a" / "folder.txt").symlink_to(folder / "b")
    (folder / "a" / "up").symlink_to(folder)  # walking into it would never end
    (folder / "b" / "loop.txt").symlink_to(folder / "b" / "loop.txt")
    (folder / "b" / "gone.txt").symlink_to(folder / "nowhere.txt")
    (folder / "extras").mkdir()
    (folder / "extras" / "system.md").symlink_to("/etc")  # not a document's name: skipped, and said why
    code, out = preprocess(capsys, "b56", folder, "folder")
    assert code == 0, out
    lines = quarantined(env / "artifacts", "b56", len(GOOD) + 4, len(GOOD))
    assert "a symbolic link to a folder" in lines[f"{folder}/a/folder.txt"]["detail"]
    assert "a symbolic link to a folder" in lines[f"{folder}/a/up"]["detail"]
    assert "leads nowhere" in lines[f"{folder}/b/loop.txt"]["detail"]
    assert "leads nowhere" in lines[f"{folder}/b/gone.txt"]["detail"]
    (system,) = skipped_files(env / "artifacts", "b56")
    assert system.startswith("extras/system.md (a symbolic link to /etc, outside data.path")


@pytest.mark.bad_input("B57")
def test_fifos_sockets_and_devices_are_never_opened(env):
    folder = class_folders(env / "b57")
    os.mkfifo(folder / "a" / "pipe.txt")  # opened for reading, it would wait for a writer forever
    listener = socket.socket(socket.AF_UNIX)
    short = Path(tempfile.mkdtemp(prefix="b57"))  # a socket's path must be short
    listener.bind(str(short / "s"))
    os.rename(short / "s", folder / "b" / "socket.txt")
    expected = {"a/pipe.txt": "a FIFO", "b/socket.txt": "a socket"}
    if os.geteuid() == 0:
        os.mknod(folder / "a" / "null.txt", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        expected["a/null.txt"] = "a character device"
    try:
        result, out = preprocess_in_subprocess("b57", folder, "folder", timeout=120)
    finally:
        listener.close()
        short.rmdir()
    assert result["code"] == 0 and result["seconds"] < 60, out
    lines = quarantined(env / "artifacts", "b57", len(GOOD) + len(expected), len(GOOD))
    assert sorted(lines) == sorted(f"{folder}/{name}" for name in expected)
    for name, kind in expected.items():
        assert lines[f"{folder}/{name}"]["reason"] == "unparsable"
        assert lines[f"{folder}/{name}"]["detail"].startswith(kind) and "never opened" in lines[f"{folder}/{name}"]["detail"]


def without_root_file_access() -> None:
    """In the child, before it starts: drop what lets root read any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone from the program it starts
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.bad_input("B58")
def test_an_unreadable_file_is_quarantined(env):
    folder = class_folders(env / "b58")
    private = folder / "a" / "private.txt"
    private.write_text("Apple story. Nobody may read it.")
    private.chmod(0)
    # Root reads a file whatever its mode: as root, the stage runs without the capabilities that allow it.
    run = {"preexec_fn": without_root_file_access} if os.geteuid() == 0 else {}
    try:
        result, out = preprocess_in_subprocess("b58", folder, "folder", **run)
    except subprocess.SubprocessError as err:  # a container that does not let root drop capabilities
        pytest.skip(f"cannot run the stage without root's file access here ({err})")
    assert result["code"] == 0, out
    (line,) = quarantined(env / "artifacts", "b58", len(GOOD) + 1, len(GOOD)).values()
    assert line["source"] == f"{folder}/a/private.txt" and line["reason"] == "unparsable"
    assert "Permission denied" in line["detail"] and line["label"] == "a"


@pytest.mark.bad_input("B64")
def test_a_gigabyte_file_in_a_folder_is_too_large_and_never_read(env):
    folder = class_folders(env / "b64")
    with open(folder / "a" / "huge.txt", "wb") as huge:
        huge.truncate(GiB)  # sparse: no disk used
    result, out = preprocess_in_subprocess("b64", folder, "folder")
    assert result["code"] == 0 and result["rss_growth_mb"] < 200 and result["seconds"] < 60, (result, out)
    (line,) = quarantined(env / "artifacts", "b64", len(GOOD) + 1, len(GOOD)).values()
    assert line["reason"] == "too_large" and f"{GiB:,} bytes" in line["detail"] and line["id"] == "a/huge"


# ----------------------------------------------------------------------------- values that parse but make no sense


def jsonl(path: Path, rows: list, extra_lines: list[str] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines),
                    encoding="utf-8")
    return path


@pytest.mark.bad_input("B59")
def test_labels_that_are_numbers_or_booleans_are_one_class_each(env, capsys):
    labels = [1, "1", 1.0, " 1 ", True, "true"]  # 1, 1.0 and "1" are one class; true and "true" another
    rows = [{"id": f"d{i}", "text": f"Story number {i}. It has a label of type {type(labels[i % 6]).__name__}.",
             "label": labels[i % 6]} for i in range(24)]
    data = jsonl(env / "b59.jsonl", rows, ['{"id": "nan", "text": "A story. Its label is NaN.", "label": NaN}',
                                           '{"id": "obj", "text": "A story. Its label is an object.", "label": {"x": 1}}',
                                           '{"id": "inf", "text": "A story. Its label is infinite.", "label": Infinity}'])
    code, out = preprocess(capsys, "b59", data, "jsonl")
    assert code == 0, out
    assert json.loads((outputs(env / "artifacts", "b59") / "labels.json").read_text()) == ["1", "true"]
    lines = quarantined(env / "artifacts", "b59", 27, 24)
    by_line = {int(source.rsplit(" ", 1)[1]): line for source, line in lines.items()}
    assert by_line[25]["reason"] == "missing_label"  # NaN: a missing value, as pandas writes one
    assert by_line[26]["reason"] == "unparsable" and "holds a dict" in by_line[26]["detail"]
    assert by_line[27]["reason"] == "unparsable" and "non-finite number" in by_line[27]["detail"]


@pytest.mark.bad_input("B60")
def test_json_nested_too_deeply_or_a_number_too_long_is_quarantined(env, capsys):
    deep = '{"id": "deep", "text": "A story.", "label": "a", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    long_number = '{"id": "long", "text": "A story.", "label": "a", "extra": ' + "9" * 5000 + "}"
    data = jsonl(env / "b60.jsonl", GOOD, [deep, long_number])
    code, out = preprocess(capsys, "b60", data, "jsonl")
    assert code == 0 and "Traceback" not in out, out
    lines = quarantined(env / "artifacts", "b60", len(GOOD) + 2, len(GOOD))
    assert "nested too deeply" in lines[f"{data}:line {len(GOOD) + 1}"]["detail"]
    assert "4300 digits" in lines[f"{data}:line {len(GOOD) + 2}"]["detail"]
    assert {line["reason"] for line in lines.values()} == {"unparsable"}


@pytest.mark.bad_input("B61")
def test_a_text_that_is_not_a_string_is_quarantined(env, capsys):
    texts = {"number": 42, "list": ["A story.", "Another."], "JSON object": {"body": "A story."}, "boolean": True}
    data = jsonl(env / "b61.jsonl", GOOD, [json.dumps({"id": kind, "text": text, "label": "a"})
                                           for kind, text in texts.items()])
    code, out = preprocess(capsys, "b61", data, "jsonl")
    assert code == 0, out
    lines = quarantined(env / "artifacts", "b61", len(GOOD) + 4, len(GOOD))
    for n, kind in enumerate(texts, start=len(GOOD) + 1):
        line = lines[f"{data}:line {n}"]
        assert line["reason"] == "unparsable" and f"holds a {kind} (" in line["detail"] and "expected a string" in line["detail"]


@pytest.mark.bad_input("B62")
def test_settings_without_an_upper_bound_are_refused(env, capsys):
    huge = ["model.word_attention.hard_k=1000000", "preprocess.limits.max_words=1000000000",
            "model.sentence_attention.context_dim=1000000", "preprocess.vocab.max_size=1000000000000",
            "preprocess.shard_documents=1000000000", "train.batch_size=1000000000", "explain.report_documents=1000000000",
            "explain.ks=[1, 1000000]", "data.max_chars=1000000000000", "data.demo.num_documents=1000000000"]
    code, out = main(["preprocess", *set_args(huge)]), capsys.readouterr().err
    assert code == 2 and "Traceback" not in out
    for key in ("model.word_attention.hard_k", "preprocess.limits.max_words", "model.sentence_attention.context_dim",
                "preprocess.vocab.max_size", "preprocess.shard_documents", "train.batch_size",
                "explain.report_documents", "explain.ks.1", "data.max_chars", "data.demo.num_documents"):
        assert f"  {key}: Input should be less than or equal to" in out, key  # every one at once
    # Within its own bound, but more positions than a document keeps after truncation:
    code = main(["preprocess", *set_args(["model.sentence_attention.mode=hard", "model.sentence_attention.hard_k=20",
                                          "preprocess.limits.max_sentences=10"])])
    out = capsys.readouterr().err
    assert code == 2 and "model.sentence_attention.hard_k (20) is more than preprocess.limits.max_sentences (10)" in out


@pytest.mark.bad_input("B63")
def test_a_text_that_normalization_expands_past_max_chars_is_too_large(env, capsys):
    # U+FDFA is one character; NFKC writes it as 18. 1,000 of them are 18,000 characters, over 10,000.
    data = jsonl(env / "b63.jsonl", GOOD, [json.dumps({"id": "x", "text": "A story. " + "\ufdfa" * 1000, "label": "a"})])
    code, out = preprocess(capsys, "b63", data, "jsonl", "data.max_chars=10000")
    assert code == 0, out
    (line,) = quarantined(env / "artifacts", "b63", len(GOOD) + 1, len(GOOD)).values()
    assert line["reason"] == "too_large" and "18,009 characters after NFKC normalization" in line["detail"]
    assert "data.max_chars" in line["detail"]
