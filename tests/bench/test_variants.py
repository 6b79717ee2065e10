"""``python -m benchmarks.variants``: its arguments and the config each seed trains with (the training itself is
``benchmarks.compare.run_han``, which the quick benchmark runs)."""

from __future__ import annotations

import json

from benchmarks.variants import main, variant_config


def test_each_seed_gets_its_own_artifacts_and_the_settings_given(capsys):
    config = variant_config("bbc", "none", 1, ["model.sentence_encoder=none"])
    assert config.name == "v-bbc-none-s1" and config.seed == 1
    assert config.model.sentence_encoder == "none" and config.evaluate.baseline.input == "full_text"
    assert config.tracking.experiment == "variants"  # never the dataset's own experiment or registered model
    assert config.tracking.registered_model == "v"


def test_without_a_dataset_tag_and_seeds_it_explains_itself(capsys):
    assert main(["bbc", "none"]) == 2
    assert "python -m benchmarks.variants bbc none 42,1,2" in capsys.readouterr().err
    assert main(["nope", "x", "42"]) == 2


def _seed(seed: int, accuracy: float, ratio: float) -> dict:
    faith = {"documents": 10, "comprehensiveness_ratio": {"1": ratio, "2": ratio, "3": ratio},
             "weight_share": {"1": 0.3, "2": 0.5},
             "comprehensiveness": {"attention": {"1": 0.1, "2": 0.2, "3": 0.3}, "random": {"1": 0.01, "2": 0.02, "3": 0.03}},
             "sufficiency": {"attention": {"1": 0.05, "2": 0.02, "3": 0.01}, "random": {"1": 0.2, "2": 0.1, "3": 0.05}}}
    return {"seed": seed, "accuracy": accuracy, "macro_f1": accuracy, "epochs": 5, "train_seconds": 1.0, "faithfulness": faith}


def test_recorded_variants_keep_each_seed_and_the_markdown_says_their_mean(tmp_path):
    from benchmarks.variants import record

    path = tmp_path / "variants.json"
    record(path, "bbc", "ema", ["train.ema_decay=0.99"], [_seed(42, 0.96, 10.0), _seed(1, 0.98, 20.0)])
    record(path, "bbc", "other", ["model.dropout=0.5"], [_seed(42, 0.90, 2.0)])
    record(path, "bbc", "ema", ["train.ema_decay=0.99"], [_seed(42, 0.97, 10.0), _seed(1, 0.99, 20.0)])  # replaced
    data = json.loads(path.read_text())
    assert list(data["variants"]) == ["bbc/ema", "bbc/other"]
    assert [r["accuracy"] for r in data["variants"]["bbc/ema"]["per_seed"]] == [0.97, 0.99]
    table = path.with_suffix(".md").read_text()
    assert "| bbc | `train.ema_decay=0.99` | 0.9700 / 0.9900 (accuracy; seeds 42, 1) | 0.9800 | 15.0x |" in table
    assert "| bbc | `model.dropout=0.5` | 0.9000 (accuracy; seeds 42) | 0.9000 | 2.0x |" in table
    path.write_text(json.dumps({**data, "notes": ["Run: by hand, on a quiet machine."]}))
    record(path, "bbc", "third", ["model.dropout=0.2"], [_seed(42, 0.95, 3.0)])  # the notes stay, under the table
    table = path.with_suffix(".md").read_text()
    assert table.index("`model.dropout=0.2`") < table.index("Run: by hand, on a quiet machine.")
