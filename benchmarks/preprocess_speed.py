"""Preprocessing throughput on real data: documents/s end to end, one worker vs all cores, same run.

    HAN_DATA_DIR=../shared/data python -m benchmarks.preprocess_speed [--config configs/imdb.yaml]

Writes ``benchmarks/results/preprocess-<date>.json``. The target (issue #2) is >= 2,000
IMDB documents/s end to end on 2 cores; the single-worker run in the same process is the
baseline the parallel speed-up is measured against.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import psutil

from pipeline.config import load_config
from pipeline.stages import preprocess

RESULTS = Path(__file__).resolve().parent / "results"


def measure(config_path: str, workers: int, artifacts: Path) -> dict:
    os.environ["HAN_ARTIFACTS_DIR"] = str(artifacts / f"workers-{workers}")
    config = load_config(config_path, [f"preprocess.workers={workers}"])
    started = time.perf_counter()
    result = preprocess.run(config, force=True)
    seconds = time.perf_counter() - started
    documents = result.manifest["counts"]["input"]
    return {"workers": workers, "documents": documents, "seconds": round(seconds, 2),
            "documents_per_second": round(documents / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/imdb.yaml")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        baseline = measure(args.config, 1, Path(tmp))
        parallel = measure(args.config, cores, Path(tmp))
    report = {
        "machine": {"cpus": cores, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(), "platform": platform.platform()},
        "config": args.config,
        "single_worker": baseline,
        "all_cores": parallel,
        "speedup": round(parallel["documents_per_second"] / baseline["documents_per_second"], 2),
        "target_documents_per_second": 2000,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"preprocess-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
