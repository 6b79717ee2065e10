"""runtime.*: TensorFlow's thread pools are set before TensorFlow starts, and never fail a run after."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.config import PROJECT_ROOT
from pipeline.runtime import TENSORFLOW_LOG, has_gpu_device, keep_start_output, startup_errors


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT),
                   "HAN_ARTIFACTS_DIR": os.environ["HAN_ARTIFACTS_DIR"], **env}
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


# What TensorFlow 2.16-2.21 print while they start on a machine without a GPU, and one line that is a real problem.
START_UP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796321801.842467   11729 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796321801.842797   11729 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
E0000 00:00:1727272727.000001   11729 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to register factory \
for plugin cuDNN when one has already been registered
E0000 00:00:1727272727.000002   11729 cuda_blas.cc:1418] Unable to register cuBLAS factory: Attempting to register factory \
for plugin cuBLAS when one has already been registered
E0000 00:00:1727272727.000003   11729 computation_placer.cc:177] computation placer already registered. Please check \
linkage and avoid linking the same target more than once.
E0000 00:00:1796321817.226460   11729 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to \
cuInit: UNKNOWN ERROR (303)
"""
REAL = "E0000 00:00:1796321817.300000   11729 op_kernel.cc:1857] Could not load the kernel library libcustom_ops.so"


def test_tensorflow_start_up_output_goes_to_the_log_not_the_console():
    code = """
        import pipeline.model.han  # imports Keras, hence TensorFlow
        import tensorflow as tf
        print(len(tf.config.list_physical_devices("CPU")), float(tf.constant(1.0) + 1.0))
    """
    # HAN_DEBUG leaves TensorFlow's output on the console, as it was (TF_CPP_MIN_LOG_LEVEL as `make` sets it).
    loud = run_python(code, HAN_DEBUG="1", TF_CPP_MIN_LOG_LEVEL="2")
    quiet = run_python(code, TF_CPP_MIN_LOG_LEVEL="2")
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    assert loud.stdout.split() == quiet.stdout.split() == ["1", "2.0"]
    start_up = [line for line in loud.stderr.splitlines() if re.match(r"[EIWF]\d{4} ", line)]
    assert start_up, loud.stderr  # this TensorFlow does print at start-up: the quiet run has something to hide
    assert not re.search(r"cuInit|cuda|absl::InitializeLog|oneDNN", quiet.stderr, re.IGNORECASE), quiet.stderr
    log = (Path(os.environ["HAN_ARTIFACTS_DIR"]) / "logs" / TENSORFLOW_LOG).read_text()
    for line in start_up:  # the same lines, from the quiet run, in the log
        assert re.sub(r"^\S+ \S+ +\d+ ", "", line) in log
    assert quiet.stderr.strip() == "" or "tensorflow: an error while starting" in quiet.stderr


def test_start_up_errors_are_the_lines_that_are_neither_expected_nor_harmless():
    assert startup_errors(START_UP, gpu=False) == []
    assert startup_errors(START_UP + REAL + "\n", gpu=False) == [REAL]
    # With a GPU, a driver that fails to start is the problem to show; the double registrations never are.
    assert [line.split()[3] for line in startup_errors(START_UP, gpu=True)] == ["cuda_platform.cc:52]"]
    assert startup_errors("Traceback (most recent call last):\nImportError: libcudart.so.12\n", gpu=False) == [
        "Traceback (most recent call last):", "ImportError: libcudart.so.12"]


def test_an_unexpected_error_gets_one_console_line_and_everything_goes_to_the_log(capsys):
    log = Path(os.environ["HAN_ARTIFACTS_DIR"]) / "logs" / TENSORFLOW_LOG
    keep_start_output(START_UP)
    assert capsys.readouterr().err == "" or has_gpu_device()
    keep_start_output(START_UP + REAL + "\n")
    console = capsys.readouterr().err.splitlines()
    assert len(console) == 1 and "libcustom_ops.so" in console[0] and str(log) in console[0]
    text = log.read_text()
    assert text.count("=== ") == 2 and text.count("failed call to cuInit") == 2 and REAL in text
