"""``benchmarks.inference_split``: the cost model it fits and applies, and its timed pass on a small model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import inference_split


def test_the_word_cost_fit_recovers_known_per_call_per_step_and_per_cell_costs():
    call, step, cell = 2e-3, 5e-5, 3e-8
    samples = [(rows, steps, call + steps * (step + rows * cell)) for rows in (1, 64, 1024) for steps in (5, 40, 70)]
    fitted = inference_split.fit_word_cost(samples)
    assert fitted["call_s"] == pytest.approx(call, rel=1e-6)
    assert fitted["step_s"] == pytest.approx(step, rel=1e-6)
    assert fitted["cell_s"] == pytest.approx(cell, rel=1e-6)


def test_chunks_are_the_sorted_non_empty_sentences_each_as_long_as_its_longest():
    lengths = np.array([0, 3, 1, 0, 7, 2, 2])
    assert inference_split.chunk_shapes(lengths, 2) == [(2, 2), (2, 3), (1, 7)]  # (1,2) (2,3) (7)
    assert inference_split.chunk_shapes(lengths, 100) == [(5, 7)]
    parts = inference_split.split_by_cost([(2, 2), (1, 7)], {"call_s": 1.0, "step_s": 0.1, "cell_s": 0.01})
    assert parts == pytest.approx({"calls_s": 2.0, "steps_s": 0.9, "cells_s": 0.11, "predicted_s": 3.01})


def test_the_timed_pass_splits_a_real_models_inference_into_parts_that_add_up(small_han):
    path, documents = small_han
    result = inference_split.measure(path, documents, rows=(1, 8), steps=(2, 6), repeats=1, chunks=(64,))

    sentences = sum(len(doc) for doc in documents)
    assert result["documents"] == 300 and result["sentences"] == sentences
    assert result["tokens"] == sum(len(s) for doc in documents for s in doc)
    assert result["docs_per_s"] > 0 and result["docs_per_s_by_sentence_batch"]["64"] > 0
    one = result["one_thread"]
    assert one["word_level_s"] > 0 and one["sentence_level_s"] > 0 and one["rest_s"] >= 0
    assert one["word_level_s"] + one["sentence_level_s"] + one["rest_s"] == pytest.approx(one["seconds"], abs=1e-3)
    assert result["word_chunks"] == -(-sentences // 1024)  # every sentence in one chunk of 1,024 or fewer
    assert result["word_cells"] >= result["tokens"]
    parts = result["word_level_by_cost"]
    assert parts["predicted_s"] == pytest.approx(parts["calls_s"] + parts["steps_s"] + parts["cells_s"], abs=1e-3)
    json.dumps(result)  # what main writes


def test_it_says_what_to_run_without_a_trained_model(tmp_path, capsys):
    assert inference_split.main(["--model", str(tmp_path / "none.keras"), "--prep", str(tmp_path)]) == 2
    assert "run `make bench` first" in capsys.readouterr().err
