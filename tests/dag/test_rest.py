"""``make serve``: the champion behind ``mlflow models serve`` on loopback, asked over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from pipeline.config import PROJECT_ROOT, load_config
from tests.dag.conftest import NAME

MAX_TEXTS, MAX_CHARACTERS = 5, 200_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def server(retrained):
    workspace = retrained[0]
    port = _free_port()
    overrides = [f"serve.port={port}", f"serve.max_texts={MAX_TEXTS}", f"serve.max_characters={MAX_CHARACTERS}"]
    command = [sys.executable, "-m", "pipeline", "serve", *[a for o in overrides for a in ("--set", o)]]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, **workspace.env}, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not come up: {process.stdout.read()[-3000:]}")
            time.sleep(0.5)
        yield url, workspace
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _texts(workspace, count: int = 3) -> list[str]:
    path = workspace.root / "artifacts" / "demo" / "preprocess" / "test.documents.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:count]]
    return ["\n\n".join(row["sentences"]) for row in rows]


def test_the_served_champion_answers_like_predict(server, monkeypatch):
    from pipeline.predict import predict

    url, workspace = server
    texts = _texts(workspace)
    status, body = _post(f"{url}/invocations", json.dumps({"dataframe_records": [{"text": t} for t in texts]}).encode())
    assert status == 200, body
    served = json.loads(body)["predictions"]
    workspace.activate(monkeypatch)
    local = predict(load_config(None), texts, model_uri=f"models:/{NAME}@champion")
    assert len(served) == len(local) == len(texts)
    for got, want in zip(served, local, strict=True):
        assert got["label"] == want["label"]
        assert got["sentences"] == want["sentences"] and len(got["sentences"]) > 1
        np.testing.assert_allclose(got["sentence_weights"], want["sentence_weights"], atol=1e-6)
        assert abs(sum(got["sentence_weights"]) - 1) < 1e-5
        for label, probability in want["probabilities"].items():
            assert abs(got["probabilities"][label] - probability) < 1e-6


def test_other_request_forms_and_a_bad_row(server):
    url, workspace = server
    text = _texts(workspace, 1)[0]
    status, body = _post(f"{url}/invocations", json.dumps({"inputs": {"text": [text, "   "]}}).encode())
    assert status == 200, body
    good, empty = json.loads(body)["predictions"]
    assert good["label"] and good["error"] is None
    assert empty["label"] is None and empty["error"] == "empty text"  # one bad row does not fail the others
    status, body = _post(f"{url}/invocations", f"text\n\"{text}\"\n".encode(), "text/csv")
    assert status == 200 and json.loads(body)["predictions"][0]["label"] == good["label"]


@pytest.mark.parametrize(("body", "content_type", "status", "says"), [
    (b'{"dataframe_records": [{"text": "unclosed', "application/json", 400, "valid JSON"),
    (b'{"dataframe_records": [{"txt": "a column typo"}]}', "application/json", 400, "missing inputs ['text']"),
    (json.dumps({"inputs": {"text": ["One. Two."] * (MAX_TEXTS + 1)}}).encode(), "application/json", 400,
     f"limit of {MAX_TEXTS} per request"),
    (json.dumps({"inputs": {"text": ["word " * (MAX_CHARACTERS // 5 + 1)]}}).encode(), "application/json", 400,
     f"limit of {MAX_CHARACTERS:,}"),
    (b"plain words", "text/plain", 415, "only supports"),
    (b"\xff\xfe\x00binary", "application/json", 400, "valid"),
])
def test_bad_requests_get_a_clear_4xx_never_a_traceback(server, body, content_type, status, says):
    url, _ = server
    started = time.monotonic()
    got, text = _post(f"{url}/invocations", body, content_type)
    assert got == status, text
    assert says in text
    assert "Traceback" not in text and "stack_trace" not in text
    assert time.monotonic() - started < 30


def test_a_long_text_costs_what_its_read_part_costs(server):
    """30,000 one-word sentences: the model reads (and the server splits) only the first max_sentences."""
    url, _ = server
    started = time.monotonic()
    got, text = _post(f"{url}/invocations", json.dumps({"inputs": {"text": ["Word. " * 30_000]}}).encode())
    assert got == 200, text
    answer = json.loads(text)["predictions"][0]
    assert answer["truncated"] is True and answer["error"] is None
    assert time.monotonic() - started < 30
