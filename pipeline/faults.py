"""Named crash points, so that the fault tests can ``kill -9`` a stage exactly where it hurts most.

``HAN_KILL_AT=<point>`` in the environment makes the process send itself ``SIGKILL`` when it
reaches that point: no ``finally``, no ``atexit``, no MLflow ``end_run`` runs, exactly as when
the machine loses power or the OOM killer strikes. Without the variable a point costs one
dictionary lookup. The points (``faults.POINTS``) are the moments between the writes that
must appear as one: the tests kill the real CLI there and check what a rerun and a reader see.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "HAN_KILL_AT"

POINTS = {
    "preprocess:writing": "some of the preprocessed files are written into the staging folder",
    "commit:staged": "a stage's staging folder is complete, not yet renamed into place",
    "commit:retired": "the previous outputs are moved aside, the new ones not yet in place",
    "train:checkpointed": "an epoch's checkpoint is committed, the next epoch not started",
    "sweep:trial_recorded": "a sweep trial's result is in results.json, the next trial not started",
    "promote:tagged": "the verdict is tagged on the model version, no alias has moved",
    "promote:challenger": "the challenger alias has moved, the champion alias not yet",
}


def point(name: str) -> None:
    """Die here with SIGKILL when ``HAN_KILL_AT`` names this point."""
    if os.environ.get(KILL_ENV) == name:
        assert name in POINTS, name
        os.kill(os.getpid(), signal.SIGKILL)
