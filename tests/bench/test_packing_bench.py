"""``benchmarks.packing``: packed against whole-model inference by batch size, on a small model."""

from __future__ import annotations

import json

from benchmarks import packing


def test_each_size_times_both_ways_on_the_first_documents(small_han):
    path, documents = small_han
    result = packing.measure(path, documents, [10, 80], rounds=2)

    first, second = result["sizes"]
    assert (first["documents"], second["documents"]) == (10, 80)
    assert first["sentences"] == sum(len(doc) for doc in documents[:10])
    for row in result["sizes"]:
        assert len(row["packed_seconds"]) == len(row["whole_seconds"]) == 2
        assert row["packed_docs_per_s"] > 0 and row["whole_docs_per_s"] > 0
        assert row["packed_over_whole"] == round(row["packed_docs_per_s"] / row["whole_docs_per_s"], 3)
    result.update(date="2026-12-06", machine={"cpu": "x", "cores": 2}, model="m.keras")
    text = packing.report(result, "python -m benchmarks.packing")
    assert "| 80 |" in text and f"{result['pack_min_sentences']:,}" in text
    json.dumps(result)


def test_it_says_what_to_run_without_a_trained_model(tmp_path, capsys):
    assert packing.main(["--model", str(tmp_path / "none.keras"), "--prep", str(tmp_path)]) == 2
    assert "run `make bench` first" in capsys.readouterr().err
