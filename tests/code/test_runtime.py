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
        from pipeline.runtime import apply_threads
        apply_threads(RuntimeConfig(intra_op_threads=1, inter_op_threads=3))
        assert "tensorflow" not in sys.modules  # nothing imported TensorFlow to set them
        print(os.environ["TF_NUM_INTRAOP_THREADS"], os.environ["TF_NUM_INTEROP_THREADS"])
        import tensorflow as tf
        apply_threads(RuntimeConfig(intra_op_threads=2, inter_op_threads=4))  # imported, not started: the API
        print(tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
        tf.constant(1.0) + 1.0  # TensorFlow starts
        apply_threads(RuntimeConfig(intra_op_threads=2, inter_op_threads=4))  # the same: silent
        apply_threads(RuntimeConfig(intra_op_threads=4, inter_op_threads=4))  # too late: a note, no failure
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
        from pipeline.runtime import apply_threads
        apply_threads(RuntimeConfig(intra_op_threads=None, inter_op_threads=None))
        print("TF_NUM_INTRAOP_THREADS" in os.environ, "TF_NUM_INTEROP_THREADS" in os.environ)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
