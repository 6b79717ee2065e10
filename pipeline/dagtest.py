"""``make dag-test``: run the retraining DAG once with ``airflow dags test``, on a throwaway Airflow.

A temporary ``AIRFLOW_HOME`` with a fresh SQLite metadata database (``airflow db migrate``), the
project's ``dags/`` folder and no example DAGs; the pipeline's own outputs go where they always go
(``HAN_ARTIFACTS_DIR``, ``MLFLOW_TRACKING_URI``), so the registry's champion carries over between
runs just as under a real scheduler.

    python -m pipeline.dagtest [--config configs/X.yaml] [--set key.path=value ...] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.config import PROJECT_ROOT, load_config
from pipeline.tracking import tracking_uri

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


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


def airflow(*args: str, env: dict[str, str], quiet: bool = False) -> int:
    command = [str(Path(sys.executable).with_name("airflow")), *args]
    output = subprocess.DEVNULL if quiet else None
    return subprocess.run(command, env=env, stdout=output, stderr=output, check=False).returncode


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
    try:
        print(f"dag-test: AIRFLOW_HOME={home} (temporary, SQLite metadata); config {config_path}", flush=True)
        if airflow("db", "migrate", env=env, quiet=True) != 0:
            print("dag-test: `airflow db migrate` failed; rerun with --keep and look in AIRFLOW_HOME", file=sys.stderr)
            return 1
        rc = airflow("dags", "test", config.retrain.dag_id, "--conf", json.dumps({"set": args.overrides}), env=env)
        registry = f"models:/{config.tracking.registered_model}@champion"
        print(f"dag-test: {'DAG run succeeded' if rc == 0 else f'DAG run FAILED (exit {rc})'}; artifacts in "
              f"{config.artifacts_dir()}, MLflow at {env['MLFLOW_TRACKING_URI']} ({registry})", flush=True)
        return rc
    finally:
        if args.keep:
            print(f"dag-test: kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
