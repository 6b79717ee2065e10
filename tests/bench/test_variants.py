"""``python -m benchmarks.variants``: its arguments and the config each seed trains with (the training itself is
``benchmarks.compare.run_han``, which the quick benchmark runs)."""

from __future__ import annotations

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
