"""TensorFlow's CPU threads from the config's ``runtime`` section.

TensorFlow fixes its thread pools when its runtime starts (the first op), so ``apply_threads``
must run before that: the CLI calls it before any stage, and the stages that run TensorFlow call it
again for callers that import them directly (the DAG, the benchmarks); it is idempotent. Before
``import tensorflow`` it sets ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` (read when
the runtime starts, so the import itself is not paid for here); after the import, TensorFlow's
``tf.config.threading``. When the runtime has already started with other values (several
pipelines in one process), the running pools stay and a note says so: nothing fails over it.
"""

from __future__ import annotations

import os
import sys

from pipeline.config import RuntimeConfig

ENVIRONMENT = {"intra_op_threads": "TF_NUM_INTRAOP_THREADS", "inter_op_threads": "TF_NUM_INTEROP_THREADS"}


def apply_threads(settings: RuntimeConfig) -> dict[str, int | None]:
    """Ask TensorFlow for ``settings``' thread counts; returns what was asked (``None``: TensorFlow's default)."""
    wanted = {name: getattr(settings, name) for name in ENVIRONMENT}
    if "tensorflow" not in sys.modules:
        for name, value in wanted.items():
            if value is not None:
                os.environ[ENVIRONMENT[name]] = str(value)
        return wanted

    import tensorflow as tf

    threading = tf.config.threading
    accessors = {
        "intra_op_threads": (threading.get_intra_op_parallelism_threads, threading.set_intra_op_parallelism_threads),
        "inter_op_threads": (threading.get_inter_op_parallelism_threads, threading.set_inter_op_parallelism_threads),
    }
    for name, value in wanted.items():
        get, set_ = accessors[name]
        # 0 from TensorFlow means "not set here": the environment variable (if any) is what it uses.
        current = get() or int(os.environ.get(ENVIRONMENT[name], "0") or 0)
        if value is None or current == value:
            continue
        try:
            set_(value)
        except RuntimeError:
            print(f"runtime: TensorFlow already runs in this process with {name.replace('_', ' ')} = "
                  f"{current or 'its default'}; runtime.{name}={value} applies to a new process", file=sys.stderr)
    return wanted
