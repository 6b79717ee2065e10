"""The serving limits, each defined once.

Their defaults and ranges are ``serve.*`` in the config (``pipeline.config.ServeConfig``); ``make serve`` hands
the configured values to the server's processes in the environment (``environment``), where the REST app and the
raw-text model read them (``current``). The evaluate stage splits its champion's re-scoring into requests within
the same limits.
"""

from __future__ import annotations

import os

from pipeline.config import ServeConfig

ENV = {"max_texts": "HAN_SERVE_MAX_TEXTS", "max_characters": "HAN_SERVE_MAX_CHARACTERS",
       "max_request_bytes": "HAN_SERVE_MAX_BYTES"}


def default(name: str) -> int:
    """``serve.<name>``'s default, from the config model."""
    return ServeConfig.model_fields[name].default


def current(name: str) -> int:
    """``serve.<name>`` for this process: its environment variable when set, else the default."""
    variable = ENV[name]
    raw = os.environ.get(variable, "")
    try:
        value = int(raw) if raw else default(name)
    except ValueError:
        raise ValueError(f"{variable}={raw!r} is not a whole number (serve.{name})") from None
    if value < 1:
        raise ValueError(f"{variable}={raw!r} must be at least 1 (serve.{name})")
    return value


def environment(settings: ServeConfig) -> dict[str, str]:
    """The variables that carry ``settings``' limits to a server's processes."""
    return {variable: str(getattr(settings, name)) for name, variable in ENV.items()}
