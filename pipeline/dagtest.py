"""``make dag-test``: run the retraining DAG once with ``airflow dags test``, on a throwaway Airflow.

A temporary ``AIRFLOW_HOME`` with a fresh SQLite metadata database (``airflow db migrate``), the
project's ``dags/`` folder and no example DAGs; the pipeline's own outputs go where they always go
(``HAN_ARTIFACTS_DIR``, ``MLFLOW_TRACKING_URI``), so the registry's champion carries over between
runs just as under a real scheduler.

Airflow's own output (about a hundred lines of structured logs per run) goes to
``artifacts/<name>/logs/dag-test-<time>.log``, which is kept; the console shows the pipeline's
lines (``preprocess: ...``, ``train: ...``), each task's start and end state, and the log's path; when
the run fails, the log's last lines too. ``airflow dags test`` has no option for less output.

    python -m pipeline.dagtest [--config configs/X.yaml] [--set key.path=value ...] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from pipeline.config import PROJECT_ROOT, load_config
from pipeline.tracking import tracking_uri

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"
TAIL_LINES = 30

# The pipeline's own lines: "<what>: <message>" (stage lines, progress lines), never Airflow's
# timestamped records, MLflow's "2026/01/01 ... INFO" lines or a traceback.
_PROJECT_LINE = re.compile(r"^[a-z][a-z0-9 _-]*: ")
_TASK_STARTED = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_TASK_STATE = re.compile(r"Task instance state updated .*\bnew_state=(\w+)")
_TASK_ERROR = re.compile(r"^(?:\w+\.)*(\w+(?:Error|Exception): .*)")  # a failed task's traceback ends so


def airflow_env(home: Path, config_path: Path) -> dict[str, str]:
    """The environment of a self-contained Airflow over this project's DAGs."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "HAN_CONFIG": str(config_path),
        "MLFLOW_TRACKING_URI": tracking_uri(),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


class ConsoleFilter:
    """Picks, from ``airflow dags test``'s output, the lines a person follows a run by.

    ``line(text)`` returns what to print for one line of output (``None``: the log only): the
    pipeline's own lines as they are, and a ``dag-test: task <id> ...`` line when a task starts,
    when it raises (the exception's last line) and when it ends (its state: success, failed,
    up_for_retry, ...).
    """

    def __init__(self) -> None:
        self.task: str | None = None

    def line(self, text: str) -> str | None:
        text = text.rstrip("\n")
        if _PROJECT_LINE.match(text):
            return text
        started = _TASK_STARTED.search(text)
        if started:
            self.task = started.group(1)
            return f"dag-test: task {self.task} started"
        if self.task is None:
            return None
        error = _TASK_ERROR.match(text)
        if error:
            return f"dag-test: task {self.task} raised {error.group(1)}"
        state = _TASK_STATE.search(text)
        if state is None:
            return None
        if state.group(1) == "up_for_retry":
            return (f"dag-test: task {self.task} up_for_retry (Airflow runs it again after retrain.retry_delay_seconds; "
                    "Ctrl-C stops the run)")
        return f"dag-test: task {self.task} {state.group(1)}"


def airflow(*args: str, env: dict[str, str], log: TextIO, show: Callable[[str], str | None] = lambda _: None) -> int:
    """Run ``airflow <args>``: every line of its output to ``log``, the lines ``show`` picks to the console."""
    command = [str(Path(sys.executable).with_name("airflow")), *args]
    log.write(f"=== {' '.join(command)}\n")
    log.flush()
    with subprocess.Popen(command, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as process:
        for text in process.stdout:
            log.write(text)
            log.flush()
            shown = show(text)
            if shown is not None:
                print(shown, flush=True)
    return process.returncode


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a file."""
    return "".join(path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.dagtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline config (default: the demo corpus)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="config override for this DAG run (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary AIRFLOW_HOME (logs, metadata DB)")
    args = parser.parse_args(argv)
    config_path = Path(args.config).resolve()
    config = load_config(config_path, args.overrides)  # fail here, clearly, on a bad config or override
    home = Path(tempfile.mkdtemp(prefix="han-airflow-"))
    env = airflow_env(home, config_path)
    log_path = config.artifacts_dir() / "logs" / f"dag-test-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        print(f"dag-test: AIRFLOW_HOME={home} (temporary, SQLite metadata); config {config_path}", flush=True)
        with log_path.open("w", encoding="utf-8") as log:
            rc = airflow("db", "migrate", env=env, log=log)
            if rc == 0:
                rc = airflow("dags", "test", config.retrain.dag_id, "--conf", json.dumps({"set": args.overrides}),
                             env=env, log=log, show=ConsoleFilter().line)
                registry = f"models:/{config.tracking.registered_model}@champion"
                print(f"dag-test: {'DAG run succeeded' if rc == 0 else f'DAG run FAILED (exit {rc})'}; artifacts in "
                      f"{config.artifacts_dir()}, MLflow at {env['MLFLOW_TRACKING_URI']} ({registry})", flush=True)
            else:
                print(f"dag-test: `airflow db migrate` failed (exit {rc})", file=sys.stderr, flush=True)
        if rc != 0:
            print(f"dag-test: the last {TAIL_LINES} lines of Airflow's output:\n{tail(log_path)}", file=sys.stderr,
                  end="", flush=True)
        print(f"dag-test: Airflow's full output is in {log_path}", flush=True)
        return rc
    finally:
        if args.keep:
            print(f"dag-test: kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
