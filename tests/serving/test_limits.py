"""pipeline.serving.limits: one definition of each serving limit, carried to the server's processes."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.serving import limits
from pipeline.serving.bundle import check_request_size


def test_the_configured_limits_reach_a_server_process_and_are_enforced_there(monkeypatch):
    settings = load_config(overrides=["serve.max_texts=3", "serve.max_characters=50", "serve.max_request_bytes=999"]).serve
    for variable, value in limits.environment(settings).items():
        monkeypatch.setenv(variable, value)
    assert [limits.current(name) for name in ("max_texts", "max_characters", "max_request_bytes")] == [3, 50, 999]
    check_request_size(["a text"] * 3)
    with pytest.raises(ValueError, match="4 texts, more than the limit of 3 .*serve.max_texts"):
        check_request_size(["a text"] * 4)
    with pytest.raises(ValueError, match="60 characters .* limit of 50 .*serve.max_characters"):
        check_request_size(["x" * 60])


def test_without_the_environment_a_process_gets_the_configs_defaults(monkeypatch):
    for variable in limits.ENV.values():
        monkeypatch.delenv(variable, raising=False)
    defaults = load_config().serve
    assert limits.current("max_texts") == defaults.max_texts
    assert limits.current("max_characters") == defaults.max_characters
    assert limits.current("max_request_bytes") == defaults.max_request_bytes


@pytest.mark.parametrize("raw", ["many", "0", "-5"])
def test_a_bad_value_names_the_variable_and_the_setting(monkeypatch, raw):
    monkeypatch.setenv("HAN_SERVE_MAX_TEXTS", raw)
    with pytest.raises(ValueError, match=r"HAN_SERVE_MAX_TEXTS=.* \(serve.max_texts\)|HAN_SERVE_MAX_TEXTS=.*serve.max_texts"):
        limits.current("max_texts")
