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

``quiet_tensorflow_start`` (installed by ``pipeline/__init__.py``) sends what TensorFlow's C++ side
prints while it loads and probes its devices to ``$HAN_ARTIFACTS_DIR/logs/tensorflow.log``: on a
machine without a GPU that is the same CUDA-driver "errors" every time, written before Python could
filter them (``TF_CPP_MIN_LOG_LEVEL`` does not reach them). A line there that looks like an error
and is not one of those gets one line on the console pointing to the log; ``HAN_DEBUG=1`` leaves
the console untouched.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from pipeline.config import RuntimeConfig, artifacts_root

ENVIRONMENT = {"intra_op_threads": "TF_NUM_INTRAOP_THREADS", "inter_op_threads": "TF_NUM_INTEROP_THREADS"}


def apply_runtime(settings: RuntimeConfig) -> dict[str, int | None]:
    """Cap the malloc arenas and ask TensorFlow for the thread counts; returns the thread counts asked (``None``: default).

    ``auto`` thread counts should be resolved first (``PipelineConfig.resolved``); one that is not is ``None`` here.
    """
    settings = settings.resolved()
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


def memory_mb() -> dict[str, float] | None:
    """This process's resident memory now (``rss``, VmRSS) and its peak so far (``peak``, VmHWM), in MB;
    None where ``/proc/self/status`` does not say (not Linux)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"rss": round(int(fields["VmRSS"].split()[0]) / 1024, 1), "peak": round(int(fields["VmHWM"].split()[0]) / 1024, 1)}
    except (OSError, KeyError, ValueError):
        return None


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


# ------------------------------------------------------------------ TensorFlow's start-up output
TENSORFLOW_LOG = "tensorflow.log"
_ERROR_LINE = re.compile(r"^[EF]\d{4} |^Traceback |^\w+(Error|Exception)\b")
# Printed at every start by builds that register their CUDA plugins twice, GPU or not.
_ALWAYS_EXPECTED = re.compile(r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered")
# Printed at every start where there is no GPU: the CUDA driver is probed and is not there.
_EXPECTED_WITHOUT_GPU = re.compile(r"cuInit|CUDA_ERROR_NO_DEVICE|cuda_(driver|executor|platform|diagnostics)|"
                                   r"cudart_stub|kernel driver does not appear to be running")


def quiet_tensorflow_start() -> None:
    """From now on, the first ``import tensorflow`` (by anyone: Keras, MLflow, a stage) writes its start-up output to the log."""
    if os.environ.get("HAN_DEBUG") or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _TensorFlowStartFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowStartFinder())


def has_gpu_device() -> bool:
    """Whether the machine has an NVIDIA device file (``/dev/nvidia0``...): a GPU a driver serves."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def startup_errors(output: str, gpu: bool) -> list[str]:
    """The lines of TensorFlow's start-up ``output`` that look like errors and are not the expected ones."""
    return [line for line in output.splitlines()
            if _ERROR_LINE.match(line) and not _ALWAYS_EXPECTED.search(line)
            and (gpu or not _EXPECTED_WITHOUT_GPU.search(line))]


class _TensorFlowStartFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders and wraps its loader in ``_QuietLoader``."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.loader  # TensorFlow sees its own loader
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _TensorFlowStartFinder)]
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as `make` sets it: TensorFlow's INFO and WARNING lines off
        with _start_output_to_log():
            self.loader.exec_module(module)
            # Probing the devices is when the CUDA driver is tried (cuInit); the runtime and its
            # thread pools still start later, so apply_runtime's settings still apply.
            module.config.list_physical_devices()


@contextlib.contextmanager
def _start_output_to_log():
    """Point file descriptor 2 (C++ and Python stderr alike) at a temporary file, then keep what came in the log."""
    with tempfile.TemporaryFile() as captured:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, AttributeError, ValueError):  # no stderr to redirect (e.g. a closed one)
            yield
            return
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            keep_start_output(captured.read().decode("utf-8", errors="replace"))


def keep_start_output(output: str) -> None:
    """Append TensorFlow's start-up ``output`` to the log; one console line when it holds an unexpected error."""
    if not output.strip():
        return
    errors = startup_errors(output, has_gpu_device())
    log = artifacts_root() / "logs" / TENSORFLOW_LOG
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as out:
            out.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} pid {os.getpid()}: {' '.join(sys.argv)}\n"
                      f"{output.rstrip()}\n")
    except OSError:  # nowhere to keep it: the console gets the lines that matter after all
        for line in errors:
            print(line, file=sys.stderr)
        return
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        print(f"tensorflow: an error while starting: {errors[0][:300]}{more}; TensorFlow's start-up output is in {log}",
              file=sys.stderr, flush=True)
