"""A local OpenAI-compatible chat-completions server that sleeps a fixed time per call.

Run: python benchmarks/sleepy_server.py --delay 0.2  (prints the port on stdout, serves until killed).
The answer is a letter drawn from the request's text, so parsing is exercised.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SleepyHandler(BaseHTTPRequestHandler):
    delay = 0.2
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = json.loads(body)
        text = "".join(p.get("text", "") for m in request["messages"] for p in m["content"] if isinstance(p, dict))
        letters = re.findall(r"^([A-E])\. ", text, re.M) or ["A"]
        time.sleep(self.delay)
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"Answer: {random.choice(letters)}"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # 64 clients connect at once; the default backlog of 5 drops SYNs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    SleepyHandler.delay = args.delay
    server = Server(("127.0.0.1", args.port), SleepyHandler)
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
