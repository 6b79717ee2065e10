"""What one request can cost the server: a text is read only as far as the model reads, and a request
out of time (``serve.timeout_seconds``) is answered 504 *and* stops its work.

The texts are made of "a. ": the sentence splitter reads "a." as an initial, so the whole text is one
sentence and used to be split and tokenized to its end (a 10 MB one kept a core busy for minutes,
long after MLflow's 504). Real server (``python -m pipeline serve``) over real HTTP; its CPU time
from ``psutil``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pandas as pd
import psutil
import pytest
from mlflow.exceptions import MlflowException

from pipeline.config import PROJECT_ROOT
from pipeline.registry import verified_model
from pipeline.serving.bundle import READ_CHARACTERS_PER_WORD, REQUEST_DEADLINE, DeadlineExceeded
from tests.servers import free_port, server_process
from tests.stages.conftest import set_args

TIMEOUT_SECONDS = 8
ENDLESS = "a. " * 3_333_333  # 10 MB, one "sentence"
# 1,000 texts of 10,000 characters (the request limits): about a minute of reading on one core.
SLOW_REQUEST = {"inputs": {"text": ["a. " * 3_333] * 1000}}


def _post(url: str, payload: dict) -> tuple[int, str, float]:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), time.monotonic() - started


@pytest.fixture(scope="module")
def server(registered):
    workspace = registered.workspace
    port = free_port()
    overrides = [*workspace.overrides, f"serve.port={port}", f"serve.timeout_seconds={TIMEOUT_SECONDS}"]
    url = f"http://127.0.0.1:{port}"
    with server_process([sys.executable, "-m", "pipeline", "serve", *set_args(overrides)], ready_url=f"{url}/ping",
                        describe=lambda p: p.stdout.read(), cwd=PROJECT_ROOT, env={**os.environ, **workspace.env},
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        yield url, psutil.Process(process.pid)  # `serve` replaces itself with the server (execve): the same process


def _cpu_seconds(process: psutil.Process) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in [process, *process.children(recursive=True)])


@pytest.mark.bad_input("B48")
def test_a_10_mb_text_the_splitter_cannot_split_is_read_only_as_far_as_the_model_reads(server):
    url, _ = server
    status, body, seconds = _post(url, {"inputs": {"text": [ENDLESS]}})
    assert status == 200, body[:2000]
    (answer,) = json.loads(body)["predictions"]
    assert answer["error"] is None and answer["truncated"] is True
    assert len(answer["sentences"]) == 1 and 0 < len(answer["words"][0]) <= 64
    assert seconds < TIMEOUT_SECONDS  # it used to be read to its end: minutes of one core, then a 504


@pytest.mark.bad_input("B49")
def test_a_request_out_of_time_gets_504_and_its_work_stops(server):
    url, process = server
    status, body, seconds = _post(url, SLOW_REQUEST)
    assert status == 504, body[:2000]
    assert TIMEOUT_SECONDS - 1 < seconds < TIMEOUT_SECONDS + 10
    time.sleep(2)  # the model stops at its next check: between texts, each read in well under a second
    before = _cpu_seconds(process)
    time.sleep(3)
    assert _cpu_seconds(process) - before < 0.3  # idle: nothing of the request runs on (it ran for a minute)
    status, body, _ = _post(url, {"inputs": {"text": ["The match ended early. Everyone went home."]}})
    assert status == 200, body[:2000]


def test_the_model_checks_the_deadline_between_texts(registered, monkeypatch):
    """The check the server relies on, without a server: a request past its end stops within one text."""
    registered.workspace.activate(monkeypatch)
    model = verified_model(f"models:/{registered.name}/{registered.version}")
    texts = pd.DataFrame({"text": ["a. " * 3_333] * 1000})
    token = REQUEST_DEADLINE.set(time.monotonic() + 0.5)
    started = time.process_time()
    try:
        with pytest.raises(MlflowException) as stopped:
            model.predict(texts)
    finally:
        REQUEST_DEADLINE.reset(token)
    assert stopped.value.get_http_status_code() == 504 and "serve.timeout_seconds" in stopped.value.message
    assert time.process_time() - started < 5  # all 1,000 texts take about a minute
    classifier = model.unwrap_python_model().classifier
    token = REQUEST_DEADLINE.set(time.monotonic() - 1)
    try:
        with pytest.raises(DeadlineExceeded):
            classifier.predict(["One sentence."])
    finally:
        REQUEST_DEADLINE.reset(token)
    assert classifier.predict(["One sentence."])[0]["error"] is None  # no deadline outside a request


def test_reading_stops_at_a_bounded_prefix_and_says_it_cut(registered, monkeypatch):
    registered.workspace.activate(monkeypatch)
    classifier = verified_model(f"models:/{registered.name}/{registered.version}").unwrap_python_model().classifier
    limit = classifier.max_sentences * classifier.max_words * READ_CHARACTERS_PER_WORD
    started = time.process_time()
    sentences, tokens, truncated, error = classifier.read(ENDLESS)
    assert time.process_time() - started < 3  # the whole 10 MB took about 90 s of one core
    assert error is None and truncated is True and len(sentences) == 1
    assert len(tokens[0]) == classifier.max_words
    # Cut before a word, never inside one: not a piece of the long word as a token of its own.
    long_word = "Start here. " + "x" * (2 * limit)
    assert classifier.read(long_word)[:3] == (["Start here."], [classifier.processor.tokenizer.tokenize("Start here.")],
                                              True)
