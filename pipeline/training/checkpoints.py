"""Per-epoch checkpoints that survive ``kill -9``: every model and optimizer variable (the dropout seed
states included), history and early-stopping state, committed by one atomic rename.

Keras' ``BackupAndRestore`` keeps neither the seed states nor the early-stopping state, so a resumed run
would not end like an uninterrupted one; with these it does, bit for bit (``tests/stages/test_train.py``).
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import read_json, replacing_file

CHECKPOINT_FORMAT = 1


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the model (another model's, or from another version of the code)."""


def _log(message: str) -> None:
    print(f"train: {message}", file=sys.stderr, flush=True)


class Checkpoints:
    """Per-epoch checkpoints in ``<artifacts>/<name>/train.resume/``, committed by one atomic rename.

    Each epoch writes a fresh ``epoch-NNNN/`` (``state.npz``: every model and optimizer variable;
    ``best.npz``: the best epoch's model variables), then replaces ``state.json``, which names
    it. A kill at any point leaves either the old or the new checkpoint, never half of one.
    """

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = directory
        self.fingerprint = fingerprint

    def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        state_path = self.directory / "state.json"
        if not state_path.is_file():
            return None
        try:
            state = read_json(state_path)
            if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != self.fingerprint:
                _log(f"ignoring the checkpoint in {self.directory}: it belongs to other data or settings")
                return None
            folder = self.directory / state["checkpoint"]
            with np.load(folder / "state.npz", allow_pickle=False) as current, np.load(folder / "best.npz", allow_pickle=False) as best:
                return state, dict(current), dict(best)
        except (OSError, ValueError, KeyError) as err:
            _log(f"ignoring an unreadable checkpoint in {self.directory} ({err}); starting over")
            return None

    def save(self, state: dict[str, Any], current: Iterable[tuple[str, Any]], best: dict[str, np.ndarray]) -> None:
        """``current``: (key, value) pairs, read one at a time (``variable_items``), so the checkpoint
        never holds a second copy of every model and optimizer variable in memory at once."""
        name = f"epoch-{state['epochs_done']:04d}"
        folder = self.directory / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            _write_npz(folder / "state.npz", current)
            _write_npz(folder / "best.npz", best.items())
            with replacing_file(self.directory / "state.json") as handle:
                handle.write(json.dumps({**state, "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                                         "checkpoint": name}, indent=1))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a full disk: the checkpoint state.json names stays whole
            raise
        for old in self.directory.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _write_npz(path: Path, items: Iterable[tuple[str, Any]]) -> None:
    """What ``np.savez(path, **dict(items))`` writes (``np.load`` reads it), one array in memory at a time."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in items:
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


def variable_items(variables, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """``variables_dict``'s pairs, each value read when it is reached."""
    for i, v in enumerate(variables):
        yield f"{prefix}v{i:04d}", np.asarray(v.value if hasattr(v, "value") else v)


def variables_dict(variables) -> dict[str, np.ndarray]:
    """Variables by position (``v0000``...): paths can repeat across models, positions cannot."""
    return dict(variable_items(variables))


def assign_variables(variables, values: dict[str, np.ndarray]) -> None:
    if len(values) != len(variables):
        raise CheckpointMismatch(f"checkpoint holds {len(values)} variables, the model has {len(variables)}; delete the resume folder")
    for i, variable in enumerate(variables):
        value = values[f"v{i:04d}"]
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointMismatch(f"checkpoint variable {variable.path} has shape {value.shape}, expected {variable.shape}")
        variable.assign(value)
