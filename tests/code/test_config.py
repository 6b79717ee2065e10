"""Config loading: typed, strict, with errors that name the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import PROJECT_ROOT, ConfigError, PipelineConfig, load_config


def test_default_yaml_lists_exactly_the_code_defaults():
    # configs/default.yaml documents every key; it must not drift from the code.
    assert load_config(PROJECT_ROOT / "configs" / "default.yaml").to_dict() == PipelineConfig().to_dict()


@pytest.mark.parametrize("name", ["default", "bbc", "imdb"])
def test_shipped_configs_load(name):
    assert load_config(PROJECT_ROOT / "configs" / f"{name}.yaml").name in ("demo", name)


def test_unknown_key_names_key_and_file(tmp_path: Path):
    path = tmp_path / "typo.yaml"
    path.write_text("preprocess:\n  vocab:\n    min_cout: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "preprocess.vocab.min_cout: unknown key" in message


def test_wrong_type_and_out_of_range_are_reported_together(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: many\npreprocess:\n  limits:\n    max_sentences: -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "seed:" in message and "'many'" in message
    assert "preprocess.limits.max_sentences:" in message and "greater than or equal to 1" in message


def test_enum_error_lists_allowed_values():
    with pytest.raises(ConfigError, match="treebank"):
        load_config(overrides=["preprocess.tokenizer=whitespace"])


def test_overrides_are_typed_and_nested():
    config = load_config(overrides=["preprocess.vocab.min_count=5", "seed=7", "data.labels=[a, b]"])
    assert config.preprocess.vocab.min_count == 5
    assert config.seed == 7
    assert config.data.labels == ["a", "b"]


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "seed.x=1"])
def test_malformed_overrides_are_clear(bad):
    with pytest.raises(ConfigError, match="--set|seed"):
        load_config(overrides=[bad])


def test_data_path_required_for_real_formats():
    with pytest.raises(ConfigError, match="data.path is required"):
        load_config(overrides=["data.format=csv"])


def test_han_data_dir_expands_in_paths(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HAN_DATA_DIR", str(tmp_path))
    config = load_config(PROJECT_ROOT / "configs" / "bbc.yaml")
    assert config.resolved_data_path() == tmp_path / "bbc"
    monkeypatch.delenv("HAN_DATA_DIR")
    assert load_config(PROJECT_ROOT / "configs" / "bbc.yaml").resolved_data_path() == PROJECT_ROOT / "data" / "bbc"


def test_undefined_environment_variable_is_an_error():
    config = load_config(overrides=["data.format=csv", "data.path=${NO_SUCH_VARIABLE_HAN}/x.csv"])
    with pytest.raises(ConfigError, match="NO_SUCH_VARIABLE_HAN"):
        config.resolved_data_path()


def test_artifacts_dir_follows_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HAN_ARTIFACTS_DIR", str(tmp_path / "out"))
    assert load_config().stage_dir("preprocess") == (tmp_path / "out" / "demo" / "preprocess").resolve()


def test_missing_config_file_is_clear(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_misspelt_key_gets_the_closest_key_of_its_section(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key; did you mean train\.epochs\?"):
        load_config(None, ["train.epoch=3"])
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  epoch: 3\nmodel:\n  word_attention:\n    scor: dot\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.epoch: unknown key; did you mean train.epochs?" in str(err.value)
    assert "model.word_attention.scor: unknown key; did you mean model.word_attention.score?" in str(err.value)
    with pytest.raises(ConfigError, match=r"train\.zzz: unknown key \(check the spelling"):  # nothing close
        load_config(None, ["train.zzz=1"])


def test_command_names_the_config_and_overrides_the_person_used():
    assert load_config(PROJECT_ROOT / "configs" / "default.yaml").command("preprocess") == "make preprocess"
    assert load_config(None).command("train") == "make train"
    bbc = load_config(PROJECT_ROOT / "configs" / "bbc.yaml", ["seed=7", "train.epochs=3"])
    assert bbc.command("train") == "make train CONFIG=configs/bbc.yaml SET='seed=7 train.epochs=3'"
    assert bbc.command("preprocess", "--force") == (
        "python -m pipeline preprocess --force --config configs/bbc.yaml --set seed=7 --set train.epochs=3")
    assert bbc.model_copy().command("evaluate") == bbc.command("evaluate")
    assert PipelineConfig().command("explain") == "make explain"  # not loaded from a file: no CONFIG to name


def _leaves(mapping: dict, prefix: str = "") -> dict[str, object]:
    leaves = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def _documented_lines(path: Path) -> dict[str, str]:
    """Each block-style key of a YAML file with its line and the comment lines that continue it."""
    lines, stack, last = {}, [], None
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or (stripped.startswith("#") and last is None):
            continue
        if stripped.startswith("#"):
            lines[last] += " " + stripped
            continue
        indent = len(raw) - len(raw.lstrip())
        key = stripped.split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        last = ".".join(name for _, name in stack)
        lines[last] = raw
    return lines


def _choices(model: type, prefix: str = "") -> dict[str, tuple]:
    """Every field of the config model whose values are a fixed set (Literal), with the set."""
    import typing

    from pydantic import BaseModel

    found = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(_choices(annotation, f"{prefix}{name}."))
            continue
        stack, literals = [annotation], []
        while stack:
            current = stack.pop()
            if typing.get_origin(current) is dict:  # a mapping keyed by choices lists its keys (the key sets above)
                continue
            if typing.get_origin(current) is typing.Literal:
                literals += [value for value in typing.get_args(current) if isinstance(value, str)]
            else:
                stack += list(typing.get_args(current))
        if len(literals) > 1:
            found[f"{prefix}{name}"] = tuple(literals)
    return found


def test_default_yaml_lists_every_key_and_every_choice():
    # Equal values (above) can hide a key that is missing from the file: a missing key takes the code's default.
    path = PROJECT_ROOT / "configs" / "default.yaml"
    written = _leaves(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert sorted(written) == sorted(_leaves(PipelineConfig().to_dict()))
    documented = _documented_lines(path)
    def line(key: str) -> str:  # a key inside a flow mapping ({score: additive, ...}) is documented on its parent
        return documented.get(key) or line(key.rsplit(".", 1)[0])

    undocumented = {key: [c for c in choices if c not in line(key)] for key, choices in _choices(PipelineConfig).items()}
    assert {key: missing for key, missing in undocumented.items() if missing} == {}
