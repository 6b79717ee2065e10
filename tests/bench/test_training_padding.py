"""``benchmarks.training_padding``: the cells it counts are the ones the model's length groups really pad to."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import training_padding
from pipeline.config import load_config
from pipeline.data.shards import load_split
from pipeline.stages import preprocess


def test_group_cells_are_what_split_by_length_pads_to():
    from pipeline.model.han import SplitByLength

    rng = np.random.default_rng(0)
    for sentences, groups in ((300, 4), (100, 4), (20, 2), (700, 8)):
        tokens = np.zeros((sentences, 50), dtype=np.int32)
        for row, length in enumerate(rng.integers(0, 51, sentences)):
            tokens[row, :length] = rng.integers(2, 100, length)
        *parts, _ = SplitByLength(groups, 64)(tokens)
        model_cells = sum(int(np.prod(part.shape)) for part in parts)
        assert training_padding.group_cells(training_padding.row_lengths(tokens[None]), groups, 64) == model_cells


def test_padding_cut_cells_are_what_split_by_length_pads_to_with_padding_cuts():
    from pipeline.model import han

    assert (training_padding.STEP_COST, training_padding.GROUP_COST) == (han.STEP_COST, han.GROUP_COST)
    rng = np.random.default_rng(1)
    for sentences, groups in ((300, 4), (100, 4), (20, 2), (700, 8), (1, 3)):
        tokens = np.zeros((sentences, 50), dtype=np.int32)
        for row, length in enumerate(rng.integers(1, 51, sentences)):
            tokens[row, :length] = rng.integers(2, 100, length)
        *parts, _ = han.SplitByLength(groups, cuts="padding")(tokens)
        model_cells = sum(int(np.prod(part.shape)) for part in parts)
        assert training_padding.padding_cut_cells(training_padding.row_lengths(tokens[None]), groups) == model_cells


def test_the_model_steps_over_its_real_sentences_only():
    tokens = np.zeros((2, 5, 4), dtype=np.int32)
    tokens[0, 0, :2] = 7  # one sentence of 2 words, then 4 padding sentences
    tokens[1, :, :] = 9  # five sentences of 4 words
    # The 6 real sentences and the one empty row SplitByLength adds per group, 4 words wide: not the batch's 10 rows.
    assert training_padding.model_cells(tokens, groups=1, min_sentences=1) == (6 + 1) * 4
    # Two groups: rows [0 0 2 4] and [4 4 4 4] after the 2 empty rows are added and all 8 sorted.
    assert training_padding.model_cells(tokens, groups=2, min_sentences=1) == 4 * 4 + 4 * 4


def test_packed_cells_pad_each_chunk_to_its_own_longest_and_skip_padding_sentences():
    lengths = np.array([0, 3, 1, 0, 7, 2, 2])
    assert training_padding.packed_cells(lengths, chunk=2) == 2 * 2 + 2 * 3 + 1 * 7  # (1,2) (2,3) (7)
    assert training_padding.packed_cells(lengths, chunk=100) == 5 * 7


def test_one_epoch_of_the_training_stream_is_counted_every_way(tmp_path, capsys):
    config = load_config(overrides=["data.demo.num_documents=300"])
    prep = preprocess.run(config).output_dir
    assert training_padding.main(["--prep", str(prep), "--groups", "4", "--chunk", "256"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    train = load_split(prep, "train")
    assert result["documents"] == len(train) and result["cells"]["real"] == int(np.count_nonzero(train.tokens))
    cells = result["cells"]
    assert cells["real"] <= cells["packed"] <= cells["groups"] <= cells["dense"]
    assert 0 < result["real_share_dense"] <= result["real_share_groups"] <= result["real_share_packed"] <= 1
    assert 0 < result["padding_sentence_share"] < 1  # demo documents differ in sentence count


def test_without_a_preprocessed_corpus_it_says_what_to_run(tmp_path, capsys):
    assert training_padding.main(["--prep", str(tmp_path / "missing")]) == 2
    assert "run `make bench`" in capsys.readouterr().err
