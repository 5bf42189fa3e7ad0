"""A real chat-completions server on 127.0.0.1 whose every reply is scripted byte for byte (status,
headers, body, pauses, trickling), for the reliability tests of the openai: adapter."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "sk-prop-SECRET-9f8e7d6c5b4a"


def completion(text) -> bytes:
    return json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


@dataclass
class Reply:
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0  # before the status line
    trickle_s: float = 0.0  # pause between body chunks of `chunk` bytes
    chunk: int = 1 << 20
    content_length: int | None = None  # None: the true length; -1: no header (close ends the body)


class ScriptedServer:
    """`script(n, request) -> Reply` answers the n-th request (1-based). Every request is logged
    with its path, method, headers and body."""

    def __init__(self, script=None):
        self.requests: list[dict] = []
        self.script = script or (lambda n, req: Reply(body=completion("Answer: A")))
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                n_bytes = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n_bytes) if n_bytes else b""
                req = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": raw}
                with server.lock:
                    server.requests.append(req)
                    n = len(server.requests)
                reply = server.script(n, req)
                try:
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    self.send_response_only(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    if reply.content_length != -1:
                        length = len(reply.body) if reply.content_length is None else reply.content_length
                        self.send_header("Content-Length", str(length))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for i in range(0, len(reply.body), max(1, reply.chunk)):
                        self.wfile.write(reply.body[i : i + reply.chunk])
                        self.wfile.flush()
                        if reply.trickle_s:
                            time.sleep(reply.trickle_s)
                except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
                    pass  # the client gave up on purpose
                self.close_connection = True

            do_POST = do_GET = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "ScriptedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
