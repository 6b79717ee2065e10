"""The REST app behind ``make serve``: MLflow's scoring server with a request-size guard in front.

``python -m pipeline serve`` runs ``uvicorn --factory pipeline.serving.rest:create_app``. The app is MLflow's own scoring
app (``mlflow.pyfunc.scoring_server.init``: ``POST /invocations``, ``GET /ping``, its request
timeout) for the model in ``HAN_SERVE_MODEL_URI``, loaded in the worker only after its files matched
the hashes recorded at registration (``pipeline.registry.verified_model``). MLflow's timeout answers
504 but leaves the model running in its worker thread; ``Deadline`` gives each request its end, which
the model checks between texts and batches (``pipeline.serving.bundle.check_deadline``), so the work stops
too. ``BodyLimit`` guards the body, because MLflow reads it whole into memory before the model sees it:

- a request whose ``Content-Length`` is over ``HAN_SERVE_MAX_BYTES`` (``serve.max_request_bytes``)
  is answered 413 before a byte of its body is read; a body sent without a length (chunked) is
  counted as it arrives and cut off with 413 as soon as it passes the limit;
- an error answer (4xx) never echoes a large request back: MLflow puts the unparsable input into
  its "malformed JSON" message; the guard keeps the first ``ERROR_MESSAGE_LIMIT`` characters.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.serving import limits

MODEL_URI_ENV = "HAN_SERVE_MODEL_URI"
ERROR_MESSAGE_LIMIT = 1000

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(Exception):
    pass


def _json_response(status: int, payload: dict[str, Any]) -> tuple[Message, Message]:
    body = json.dumps(payload).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


def _shorten(body: bytes) -> bytes:
    """An MLflow error body with its ``message`` cut to about ``ERROR_MESSAGE_LIMIT`` characters.

    The middle goes: MLflow quotes the request near the start and puts the reason at the end
    ("Failed to predict data '...' with error: <our message>").
    """
    try:
        payload = json.loads(body)
    except ValueError:
        return body[:ERROR_MESSAGE_LIMIT] + b"... (cut)"
    message = payload.get("message") if isinstance(payload, dict) else None
    if isinstance(message, str) and len(message) > ERROR_MESSAGE_LIMIT:
        head, tail = ERROR_MESSAGE_LIMIT * 2 // 5, ERROR_MESSAGE_LIMIT * 3 // 5
        cut = len(message) - head - tail
        payload["message"] = f"{message[:head]} ... ({cut:,} characters of the request cut) ... {message[-tail:]}"
    return json.dumps(payload).encode()


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (413) and keep error answers short."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: int | None) -> dict[str, Any]:
        what = f"is {size:,} bytes" if size is not None else "(sent without a length) grew"
        return {"error_code": "REQUEST_TOO_LARGE",
                "message": f"the request body {what}, over the limit of {self.max_bytes:,} bytes "
                           f"({limits.ENV['max_request_bytes']}, serve.max_request_bytes); send fewer or shorter texts per request"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            for message in _json_response(413, self._too_large(int(length))):
                await send(message)
            return

        received, too_large, sent = 0, False, False
        held: list[Message] = []  # an error answer, collected to be shortened

        async def counted_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal sent
            if too_large:
                return  # the app's answer to a cut-off body (a 500) is replaced by the 413 below
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                held.append(message)
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                if message.get("more_body"):
                    return
                start, *parts = held
                body = _shorten(b"".join(part.get("body", b"") for part in parts))
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                message = {"type": "http.response.body", "body": body}
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            sent = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BaseException:
            if not too_large:
                raise
        if too_large and not sent:
            for message in _json_response(413, self._too_large(None)):
                await send(message)


class Deadline:
    """ASGI middleware: each request must be done ``seconds`` after it arrived (MLflow's request
    timeout); the model sees that end through ``pipeline.serving.bundle.REQUEST_DEADLINE`` (a context
    variable, which ``asyncio.to_thread`` carries into the thread that runs the model)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from pipeline.serving.bundle import REQUEST_DEADLINE

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = REQUEST_DEADLINE.set(time.monotonic() + self.seconds)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_DEADLINE.reset(token)


def create_app() -> BodyLimit:
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.pyfunc import scoring_server

    from pipeline.registry import verified_model

    uri = os.environ.get(MODEL_URI_ENV)
    if not uri:
        raise RuntimeError(f"{MODEL_URI_ENV} is not set: start the server with `python -m pipeline serve`")
    app = scoring_server.init(verified_model(uri))
    return BodyLimit(Deadline(app, MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()), limits.current("max_request_bytes"))
