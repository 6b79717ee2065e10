"""runtime.*: TensorFlow's thread pools are set before TensorFlow starts, and never fail a run after."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from pipeline.config import PROJECT_ROOT


def run_python(code: str) -> subprocess.CompletedProcess:
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env=environment, cwd=PROJECT_ROOT)


def test_threads_go_to_the_environment_before_tensorflow_is_imported_and_to_tensorflow_after():
    done = run_python("""
        import os, sys
        from pipeline.config import RuntimeConfig
        from pipeline.runtime import apply_runtime
        apply_runtime(RuntimeConfig(intra_op_threads=1, inter_op_threads=3))
        assert "tensorflow" not in sys.modules  # nothing imported TensorFlow to set them
        print(os.environ["TF_NUM_INTRAOP_THREADS"], os.environ["TF_NUM_INTEROP_THREADS"])
        import tensorflow as tf
        apply_runtime(RuntimeConfig(intra_op_threads=2, inter_op_threads=4))  # imported, not started: the API
        print(tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
        tf.constant(1.0) + 1.0  # TensorFlow starts
        apply_runtime(RuntimeConfig(intra_op_threads=2, inter_op_threads=4))  # the same: silent
        apply_runtime(RuntimeConfig(intra_op_threads=4, inter_op_threads=4))  # too late: a note, no failure
        print(tf.config.threading.get_intra_op_parallelism_threads())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "3", "2", "4", "2"]
    notes = [line for line in done.stderr.splitlines() if line.startswith("runtime:")]
    assert len(notes) == 1
    assert "intra op threads = 2" in notes[0] and "runtime.intra_op_threads=4 applies to a new process" in notes[0]


def test_null_leaves_tensorflow_its_own_defaults():
    done = run_python("""
        import os
        from pipeline.config import RuntimeConfig
        from pipeline.runtime import apply_runtime
        apply_runtime(RuntimeConfig(intra_op_threads=None, inter_op_threads=None))
        print("TF_NUM_INTRAOP_THREADS" in os.environ, "TF_NUM_INTEROP_THREADS" in os.environ)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


ARENAS_AFTER_THREADS = """
    import ctypes, tempfile, threading
    from pipeline.config import RuntimeConfig
    from pipeline.runtime import apply_runtime
    apply_runtime(RuntimeConfig(malloc_arenas={arenas}))
    start, kept = threading.Barrier(6), []
    def allocate():  # six threads allocating at once: glibc would give each one an arena
        start.wait()
        for _ in range(200):
            kept.append(bytearray(300_000))
    threads = [threading.Thread(target=allocate) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    libc, path = ctypes.CDLL("libc.so.6"), tempfile.mktemp()
    libc.fopen.restype = ctypes.c_void_p
    stream = ctypes.c_void_p(libc.fopen(path.encode(), b"w"))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(path).read().count("<heap nr="))
"""


def test_malloc_arenas_caps_the_arenas_threads_allocate_from():
    capped, default = (run_python(ARENAS_AFTER_THREADS.format(arenas=arenas)) for arenas in (1, None))
    assert capped.returncode == 0 and default.returncode == 0, capped.stderr + default.stderr
    assert int(capped.stdout) == 1
    assert int(default.stdout) > 1  # glibc's own default: more than one, so the cap is what made it 1


def test_release_free_memory_hands_freed_heap_pages_back_to_the_system():
    done = run_python("""
        import ctypes, gc
        from pipeline.runtime import release_free_memory
        def resident_mb():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        # 3,000 blocks of 64 KiB (under glibc's mmap threshold: on the heap), each written to so it is
        # resident; all freed but the last, which pins the heap's top so free() cannot shrink it.
        blocks = [libc.malloc(65536) for _ in range(3000)]
        for block in blocks:
            ctypes.memset(block, 1, 65536)
        for block in blocks[:-1]:
            libc.free(block)
        before = resident_mb()
        print(release_free_memory(), round(before - resident_mb()))
    """)
    assert done.returncode == 0, done.stderr
    released, freed_mb = done.stdout.split()
    assert released == "True"
    assert int(freed_mb) > 150  # of the ~187 MB freed
