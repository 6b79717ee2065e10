"""TensorFlow's CPU threads and glibc's malloc arenas from the config's ``runtime`` section.

TensorFlow fixes its thread pools when its runtime starts (the first op), so ``apply_runtime``
must run before that: the CLI calls it before any stage, and the stages that run TensorFlow call it
again for callers that import them directly (the DAG, the benchmarks); it is idempotent. Before
``import tensorflow`` it sets ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` (read when
the runtime starts, so the import itself is not paid for here); after the import, TensorFlow's
``tf.config.threading``. When the runtime has already started with other values (several
pipelines in one process), the running pools stay and a note says so: nothing fails over it.

``malloc_arenas`` caps glibc's malloc arenas (``mallopt(M_ARENA_MAX)``, as the
``MALLOC_ARENA_MAX`` environment variable does at start-up). glibc gives each new thread that
allocates an arena of its own until there are 8 per core (past that, threads share them);
TensorFlow's threads allocate and free every step's tensors, and memory freed into one arena
is not reused by another's thread, so a process's peak grows with its threads. The cap applies to arenas made
after it: set before TensorFlow starts its threads. Elsewhere than glibc it does nothing.
``malloc_trim_steps`` has the train stage call ``release_free_memory`` every N steps.
"""

from __future__ import annotations

import os
import sys

from pipeline.config import RuntimeConfig

ENVIRONMENT = {"intra_op_threads": "TF_NUM_INTRAOP_THREADS", "inter_op_threads": "TF_NUM_INTEROP_THREADS"}


def apply_runtime(settings: RuntimeConfig) -> dict[str, int | None]:
    """Cap the malloc arenas and ask TensorFlow for the thread counts; returns the thread counts asked (``None``: default)."""
    if settings.malloc_arenas is not None:
        limit_malloc_arenas(settings.malloc_arenas)
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


def release_free_memory() -> bool:
    """Hand the memory freed inside the process back to the system (glibc's ``malloc_trim(0)``).

    glibc keeps freed heap memory for reuse and returns only the top of a heap by itself; the
    freed pages in between stay resident. ``malloc_trim`` releases them too. ``False`` (and
    nothing done) off glibc or when nothing could be released.
    """
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(arenas: int) -> bool:
    """At most ``arenas`` glibc malloc arenas from now on; ``False`` where the C library is not glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, int(arenas)))


def _glibc():
    """glibc (``ctypes.CDLL``), or ``None`` where the C library is another or cannot be loaded."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
