"""``make bench-memory`` on small sizes: it runs every step in its own process and reports the documented figures.

A smoke test of the harness (slow: six fresh processes); the flatness itself is measured by
the full benchmark (25,000 vs 100,000 documents), whose figures are in the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.memory import STEPS, write_corpus
from pipeline.config import PROJECT_ROOT


def test_repeated_corpus_gives_every_copy_its_own_id(tmp_path):
    reviews = [{"id": "a", "text": "Good.", "label": "pos"}, {"id": "b", "text": "Bad.", "label": "neg"}]
    rows = [json.loads(line) for line in write_corpus(reviews, 5, tmp_path / "c.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["r0-a", "r0-b", "r1-a", "r1-b", "r2-a"]
    assert [row["text"] for row in rows] == ["Good.", "Bad.", "Good.", "Bad.", "Good."]


@pytest.mark.slow
@pytest.mark.real_data
def test_memory_benchmark_reports_peak_rss_per_step_and_size(shared_data, tmp_path):
    env = {**os.environ, "HAN_DATA_DIR": str(shared_data)}
    command = [sys.executable, "-m", "benchmarks.memory", "--sizes", "400,800", "--steps", "3", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    (path,) = tmp_path.glob("memory-*.json")
    report = json.loads(path.read_text())
    assert sorted(report["sizes"]) == ["400", "800"]
    for size, steps in report["sizes"].items():
        assert sorted(steps) == sorted(STEPS)
        assert steps["preprocess"]["documents"] == int(size)
        assert 0 < steps["stream"]["documents"] < int(size) and steps["stream"]["batches"] > 0  # the training split
        assert steps["train"]["steps"] == 3
        assert all(step["peak_rss_mb"] > 50 for step in steps.values())
    assert set(report["ratios"]) == set(STEPS)
    assert (tmp_path / path.name.replace(".json", ".md")).is_file()
