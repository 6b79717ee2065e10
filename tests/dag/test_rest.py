"""``make serve``: the champion behind MLflow's scoring app (uvicorn) on loopback, asked over real HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from pipeline.config import PROJECT_ROOT, load_config
from tests.dag.conftest import NAME
from tests.servers import free_port, server_process

MAX_TEXTS, MAX_CHARACTERS, MAX_BYTES = 5, 200_000, 2_000_000


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
    port = free_port()
    overrides = [f"serve.port={port}", f"serve.max_texts={MAX_TEXTS}", f"serve.max_characters={MAX_CHARACTERS}",
                 f"serve.max_request_bytes={MAX_BYTES}"]
    command = [sys.executable, "-m", "pipeline", "serve", *[a for o in overrides for a in ("--set", o)]]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, ready_url=f"{url}/ping", describe=lambda p: p.stdout.read(), cwd=PROJECT_ROOT,
                        env={**os.environ, **workspace.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True):
        yield url, workspace


def _texts(workspace, count: int = 3) -> list[str]:
    path = workspace.root / "artifacts" / "demo" / "preprocess" / "test.documents.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:count]]
    return ["\n\n".join(row["sentences"]) for row in rows]


def test_the_served_champion_answers_like_predict(server, monkeypatch):
    from pipeline.serving.predict import predict

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


@pytest.mark.bad_input("B42")
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
    pytest.param(b'{"dataframe_records": [{"text": "unclosed', "application/json", 400, "valid JSON",
                 marks=pytest.mark.bad_input("B34")),
    pytest.param(b'{"dataframe_records": [{"txt": "a column typo"}]}', "application/json", 400,
                 "missing inputs ['text']", marks=pytest.mark.bad_input("B35")),
    pytest.param(json.dumps({"inputs": {"text": ["One. Two."] * (MAX_TEXTS + 1)}}).encode(), "application/json", 400,
                 f"limit of {MAX_TEXTS} per request", marks=pytest.mark.bad_input("B36")),
    pytest.param(json.dumps({"inputs": {"text": ["word " * (MAX_CHARACTERS // 5 + 1)]}}).encode(), "application/json",
                 400, f"limit of {MAX_CHARACTERS:,}", marks=pytest.mark.bad_input("B37")),
    pytest.param(b"plain words", "text/plain", 415, "only supports", marks=pytest.mark.bad_input("B38")),
    pytest.param(b"\xff\xfe\x00binary", "application/json", 400, "valid", marks=pytest.mark.bad_input("B39")),
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


def _raw_post(url: str, head: dict[str, str], body_parts) -> tuple[int, str]:
    """POST over a plain socket: one thread sends the body in parts while this one reads the answer.

    An HTTP library would stop at the first send the server refuses; a client that sends 100 MB
    must still get the 413 that was answered after the first megabyte (as curl does).
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        lines = ["POST /invocations HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in head.items()), "", ""]
        sock.sendall("\r\n".join(lines).encode())

        def send_body() -> None:
            try:
                for part in body_parts:
                    sock.sendall(part)
            except OSError:  # the server answered and closed while we were still sending
                pass

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # the server closed with our unread bytes still queued: what it answered came first
        sender.join(timeout=30)
    head_text, _, body = answer.partition(b"\r\n\r\n")
    assert head_text, "no answer before the connection closed"
    return int(head_text.split()[1]), body.decode()


@pytest.mark.bad_input("B40")
def test_a_100_mb_payload_is_refused_before_it_is_read(server):
    url, _ = server
    megabyte = b"x" * (1 << 20)
    started = time.monotonic()
    status, body = _raw_post(url, {"Content-Type": "application/json", "Content-Length": str(100 << 20)},
                             (megabyte for _ in range(100)))
    assert status == 413, body
    assert f"limit of {MAX_BYTES:,} bytes" in body and "serve.max_request_bytes" in body
    assert time.monotonic() - started < 10


@pytest.mark.bad_input("B41")
def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(server):
    url, _ = server
    chunk = b"a" * 100_000
    # Just past the limit, then the client waits (no final chunk): the answer must not wait for the end.
    parts = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BYTES // len(chunk) + 2))
    status, body = _raw_post(url, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, parts)
    assert status == 413, body
    assert "sent without a length" in body


def test_an_error_answer_does_not_echo_a_large_request(server):
    url, _ = server
    malformed = b'{"inputs": {"text": ["' + b"a" * 500_000  # valid size, invalid JSON: MLflow quotes the input
    status, body = _post(f"{url}/invocations", malformed)
    assert status == 400
    assert len(body) < 5_000 and "characters of the request cut" in body


def test_the_server_listens_on_loopback_only(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # the address other machines would use
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            pytest.skip("this machine has no non-loopback IPv4 address to try")
    assert not address.startswith("127.")
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=3).close()
