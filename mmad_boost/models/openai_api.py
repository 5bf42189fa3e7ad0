"""`openai:<model>`: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, ...).

Standard library only. The API key is read from an environment variable named by the user and
kept out of reprs, config(), exceptions and logs (server error texts are scrubbed of it too).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import http.client
import io
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from PIL import Image

from ..errors import MmadError, ModelError
from ..protocol.prompt import Prompt
from ..registry import convert_options
from .base import MLLM

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_RESPONSE_BYTES = 32 << 20  # a chat completion is kilobytes; more is a broken server
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504, 520, 522, 524}
NO_KEY = ("", "none", "-")  # api_key_env values meaning "send no key" (local servers)


class _Secret:
    """Holds the key so that repr(), vars() and logging of the model never show it."""

    __slots__ = ("value",)

    def __init__(self, value: str | None):
        self.value = value

    def __repr__(self) -> str:
        return "***"


def encode_image(image: Image.Image, max_side: int | None = 512, fmt: str = "jpeg", quality: int = 95) -> str:
    """A data URL of the image, longer side capped at max_side (MMAD sent 512 px to API models)."""
    im = image.convert("RGB")
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG")
    else:
        im.save(buf, format="JPEG", quality=quality)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _encoded(image: Image.Image, max_side: int | None, fmt: str) -> str:
    """encode_image memoised on the image object: the runner shares one image among its ~4.7 questions
    (and across threads), so each image is resized and encoded once, not once per question."""
    cache = image.__dict__.setdefault("_mmad_data_urls", {})
    key = (max_side, fmt, image.size, image.mode)
    if key not in cache:
        cache[key] = encode_image(image, max_side, fmt)
    return cache[key]


def _retry_after(headers) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date (RFC 9110 §10.2.3); a date without a zone is GMT
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # unparsable: fall back to our own backoff


class _Deadline:
    """A whole request's time limit: the socket's timeout bounds each read, but a server trickling
    a byte at a time would never trip it, so at the deadline the socket is shut down."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False
        self.socks: list = []
        self.lock = threading.Lock()
        self.timer = threading.Timer(seconds, self.fire)
        self.timer.daemon = True

    def watch(self, sock) -> None:
        with self.lock:
            self.socks.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def fire(self) -> None:
        with self.lock:
            self.fired = True
            socks = list(self.socks)
        for sock in socks:
            _shutdown(sock)

    def __enter__(self) -> "_Deadline":
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()


def _shutdown(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answered as errors: following one would send the key (and, as a GET, no
    question) wherever the server points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener(deadline: _Deadline):
    class Conn(http.client.HTTPConnection):
        def connect(self):
            super().connect()
            deadline.watch(self.sock)

    class SConn(http.client.HTTPSConnection):
        def connect(self):
            super().connect()
            deadline.watch(self.sock)

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Conn, req)

    class SHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(SConn, req, context=self._context)

    return urllib.request.build_opener(Handler, SHandler, _NoRedirect)


class OpenAIChatModel(MLLM):
    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str = "OPENAI_API_KEY",
        max_tokens: int = 200,
        timeout: float = 60,
        max_retries: int = 5,
        max_side: int | None = 512,
        temperature: float = 0,
        system: str | None = None,
        image_format: str = "jpeg",
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        deadline: float | None = None,
    ):
        if not model:
            raise MmadError("openai:<model>: give the model name, e.g. openai:gpt-4o")
        if image_format not in ("jpeg", "png"):
            raise MmadError(f"openai image_format {image_format!r}: use jpeg or png")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise MmadError(f"--base-url {base_url!r}: use an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
        self.api_key_env = api_key_env
        if api_key_env.lower() in NO_KEY:
            self._key = _Secret(None)
        else:
            key = os.environ.get(api_key_env)
            if not key:
                raise MmadError(
                    f"environment variable {api_key_env} is not set: export the API key there, "
                    "or name another with --api-key-env (use --api-key-env none for servers without a key)"
                )
            self._key = _Secret(key)
        self.max_tokens = int(max_tokens)
        self.timeout = float(timeout)
        # the whole request (connect, send, wait, read): by default twice the per-read timeout
        self.deadline = float(deadline) if deadline else 2 * self.timeout
        if not (self.timeout > 0 and self.deadline > 0):
            raise MmadError(f"openai timeout={timeout!r} deadline={deadline!r}: both must be positive seconds")
        self.max_retries = int(max_retries)
        self.max_side = int(max_side) if max_side else None
        self.temperature = float(temperature)
        self.system = system
        self.image_format = image_format
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._connected = False  # after one answer, connection errors are retried (server restarts)
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIChatModel(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def config(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "base_url": self.base_url,
            "max_tokens": self.max_tokens,
            "max_side": self.max_side,
            "temperature": self.temperature,
            "image_format": self.image_format,
            "system": self.system,
        }

    # -- request -------------------------------------------------------------
    def messages(self, prompt: Prompt) -> list[dict]:
        content: list[dict] = []
        for part in prompt.parts:
            if isinstance(part, str):
                if part:
                    content.append({"type": "text", "text": part})
            else:
                url = _encoded(part, self.max_side, self.image_format)
                content.append({"type": "image_url", "image_url": {"url": url}})
        messages = []
        system = prompt.system if prompt.system is not None else self.system
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": content})
        return messages

    def request_body(self, prompt: Prompt) -> dict:
        return {"model": self.model, "messages": self.messages(prompt), "max_tokens": self.max_tokens, "temperature": self.temperature}

    def _scrub(self, text: str) -> str:
        key = self._key.value
        return text.replace(key, "***") if key else text

    def _post(self, body: bytes) -> tuple[int, Any, bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key.value:
            headers["Authorization"] = "Bearer " + self._key.value
        req = urllib.request.Request(self.base_url + "/chat/completions", data=body, headers=headers, method="POST")
        with _Deadline(self.deadline) as deadline:
            try:
                try:
                    with _opener(deadline).open(req, timeout=self.timeout) as resp:
                        result = resp.status, resp.headers, _read_capped(resp)
                except urllib.error.HTTPError as e:
                    with e:
                        result = e.code, e.headers, _read_capped(e)
                if deadline.fired:  # the shut-down socket may have ended a body without a length early
                    raise TimeoutError("deadline")
                return result
            except (OSError, http.client.HTTPException):
                if deadline.fired:
                    raise TimeoutError(f"no complete answer within the request deadline of {self.deadline:g} s") from None
                raise

    def _delay(self, attempt: int, headers) -> float:
        hinted = _retry_after(headers)
        if hinted is not None:
            return min(hinted, self.max_backoff)
        # exponential backoff with full jitter between half and the whole step
        step = min(self.max_backoff, self.backoff * 2**attempt)
        return step * self._rng.uniform(0.5, 1.0)

    def generate(self, prompt: Prompt) -> str:
        body = json.dumps(self.request_body(prompt)).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            headers = None
            try:
                status, headers, data = self._post(body)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets are OSErrors
                reason = getattr(e, "reason", e)
                if not self._connected and isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
                    raise MmadError(f"openai: cannot reach {self.base_url} ({self._scrub(str(reason))}); start the server or fix --base-url") from None
                last = f"connection error: {self._scrub(str(reason))}"
            else:
                if status == 200:
                    self._connected = True
                    return self._scrub(self._answer(data))  # a server echoing the key must not put it in records
                if 300 <= status < 400:
                    where = self._scrub(str((headers.get("Location") if headers is not None else None) or "?"))[:200]
                    raise MmadError(
                        f"openai: {self.base_url}/chat/completions answered HTTP {status} redirecting to {where}; "
                        "redirects are not followed (the API key would go along); set --base-url to the final URL"
                    )
                detail = self._scrub(_error_text(data))
                if status in (401, 403):
                    raise MmadError(f"openai: {self.base_url} refused the API key from ${self.api_key_env} (HTTP {status}: {detail}); check the key")
                if status == 404:
                    raise MmadError(
                        f"openai: {self.base_url}/chat/completions answered HTTP 404 ({detail}); check --base-url (usually ends in /v1) and the model name {self.model!r}"
                    )
                if status not in RETRY_STATUS:
                    raise ModelError(f"HTTP {status}: {detail}")
                last = f"HTTP {status}: {detail}"
            if attempt < self.max_retries:
                time.sleep(self._delay(attempt, headers))
        raise ModelError(f"gave up after {self.max_retries + 1} attempts, last: {last}")

    def _answer(self, data: bytes) -> str:
        try:
            payload = json.loads(data)
            message = payload["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            raise ModelError(f"malformed response (not a chat completion): {self._scrub(data[:200].decode('utf-8', 'replace'))!r}") from None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if not isinstance(content, str):
            refusal = message.get("refusal") if isinstance(message, dict) else None
            if isinstance(refusal, str):
                return refusal
            raise ModelError("malformed response: the message has no text content")
        return content


def _read_capped(resp) -> bytes:
    data = resp.read(MAX_RESPONSE_BYTES + 1)
    remaining = getattr(resp, "length", None)  # http.client returns a short body silently; a cut-off answer is retried
    if isinstance(remaining, int) and remaining > 0 and len(data) <= MAX_RESPONSE_BYTES:
        raise http.client.IncompleteRead(data, remaining)
    if len(data) > MAX_RESPONSE_BYTES:
        raise ModelError(f"response larger than {MAX_RESPONSE_BYTES >> 20} MB; not a chat completion")
    return data


def _error_text(data: bytes) -> str:
    try:
        err = json.loads(data).get("error")
        text = err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError, RecursionError):
        text = data.decode("utf-8", "replace")
    return " ".join(str(text).split())[:300]


def create(rest: str, **options: Any) -> OpenAIChatModel:
    """`openai:<model>`; option strings are converted by OpenAIChatModel's signature (None: its default)."""
    kwargs = convert_options(OpenAIChatModel, {k: v for k, v in options.items() if v is not None}, "openai model", skip=1)
    return OpenAIChatModel(rest, **kwargs)
