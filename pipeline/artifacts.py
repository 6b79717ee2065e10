"""Stage outputs on disk: atomic directories, file hashes and the manifest that ties them together.

A stage writes everything into a temporary sibling directory and renames it into place only
when it has finished, so a reader never sees a half-written stage (a killed run leaves a
``*.tmp-*`` directory that the next run removes).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pipeline import faults

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """One hash for a file, or for every file below a directory (names and contents)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode())
        try:
            digest.update(sha256_file(item).encode())
        except OSError as err:  # unreadable (permission denied): the reader quarantines it; that it is, counts
            digest.update(f"unreadable: {err.strerror}".encode())
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, ensure_ascii=False)
        handle.write("\n")


@contextlib.contextmanager
def replacing_file(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write ``path`` whole or not at all, for a file outside a stage's atomic directory: the block writes a
    temporary sibling (``<name>.tmp-<pid>``) that replaces ``path`` in one rename when the block ends, and is
    removed when it fails (a full disk leaves ``path`` as it was, and nothing half written beside it)."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(partial, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def output_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file in a stage directory except the manifest itself."""
    return {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """A stage's manifest, or None when it has no (complete) outputs; a killed write is recovered first."""
    recover(directory)
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def outputs_intact(directory: Path, manifest: dict[str, Any]) -> bool:
    """True when every output listed in the manifest is present with the recorded hash."""
    recorded = manifest.get("outputs") or {}
    return bool(recorded) and output_hashes(directory) == recorded


class DiskFullError(OSError):
    """A stage's outputs did not fit on the disk; the previous outputs are left as they were."""

    def __str__(self) -> str:
        return str(self.strerror)


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(error: BaseException) -> bool:
    """No space left, over a quota, or over the file-size limit (``ulimit -f``): all "the disk is full"."""
    return isinstance(error, OSError) and error.errno in _DISK_FULL


def disk_full_message(path: Path, error: OSError) -> str:
    try:
        free = f"{shutil.disk_usage(path if path.exists() else path.parent).free / 1e6:,.0f} MB free there now"
    except OSError:
        free = "free space unknown"
    return (f"not enough disk space to write {path} ({error.strerror or error}; {free}): "
            "nothing was half written, the previous outputs are unchanged; free some space or set "
            "HAN_ARTIFACTS_DIR to a larger disk, then run the stage again")


def _owner_alive(leftover: Path) -> bool:
    """Whether the process named by a ``.tmp-<pid>`` / ``.old-<pid>`` suffix is still running."""
    try:
        pid = int(leftover.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(final: Path) -> None:
    """Undo what a killed ``atomic_directory`` left beside ``final`` (leftovers of live writers stay).

    Killed between its two renames, a writer leaves ``final`` missing and the previous outputs
    in ``final.old-<pid>``: they are put back. Staging folders of dead writers are removed.
    """
    parent = final.parent
    if not parent.is_dir():
        return
    dead = [p for p in (*parent.glob(f"{final.name}.tmp-*"), *parent.glob(f"{final.name}.old-*")) if not _owner_alive(p)]
    retired = sorted((p for p in dead if ".old-" in p.name), key=lambda p: p.stat().st_mtime)
    if retired and not final.exists():
        os.replace(retired[-1], final)
    for leftover in dead:
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``final`` in one rename.

    On an exception the temporary directory is removed and ``final`` is left as it was; a disk
    that fills up is reported as ``DiskFullError`` naming the folder and the fix. A process
    killed at any point leaves ``final`` either old or new (``recover``, run by the next reader or writer,
    puts back the old one if the kill came between the two renames).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    staging = final.parent / f"{final.name}.tmp-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(error):
            raise DiskFullError(error.errno, disk_full_message(final, error)) from error
        raise
    faults.point("commit:staged")
    retired = final.parent / f"{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, retired)
        faults.point("commit:retired")
    os.replace(staging, final)
    shutil.rmtree(retired, ignore_errors=True)
