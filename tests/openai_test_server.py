"""A small OpenAI-compatible chat server for tests, on 127.0.0.1, that injects faults on demand.

It answers like a teacher would (a JSON list of {"tag", "explanation"} built from the query's own
content words) unless the test queued a fault: "429", "500", "malformed" (a 200 with a broken JSON
body), "timeout" (answers after the client gave up), "prose" (a well-formed response whose content is
not JSON) or "401". Faults are consumed one per request, in order.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STOP = {"the", "a", "an", "of", "to", "and", "in", "for", "on", "is", "that", "with", "how", "what", "me",
        "you", "your", "i", "my", "it", "this", "be", "are", "can", "please", "write", "give"}


def teacher_answer(query: str) -> str:
    words = [w for w in re.findall(r"[a-zA-Z][a-zA-Z-]{2,}", query.lower()) if w not in STOP]
    picked = list(dict.fromkeys(words))[:4] or ["general request"]
    return json.dumps([{"tag": w, "explanation": f"The query is about {w}."} for w in picked])


class FaultyOpenAIServer:
    def __init__(self, api_key: str | None = None, timeout_sleep: float = 3.0):
        self.faults: deque[str] = deque()
        self.api_key = api_key
        self.timeout_sleep = timeout_sleep
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _error(self, code: int, message: str, etype: str) -> None:
                self._send(code, json.dumps({"error": {"message": message, "type": etype}}).encode())

            def do_GET(self):  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": "teacher", "object": "model", "owned_by": "test"}]}).encode())
                else:
                    self._error(404, "not found", "not_found")

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    server.requests += 1
                    fault = server.faults.popleft() if server.faults else None
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._error(401, "invalid api key", "invalid_request_error")
                if fault == "401":
                    return self._error(401, "invalid api key", "invalid_request_error")
                if fault == "429":
                    return self._error(429, "rate limited", "rate_limit_error")
                if fault == "500":
                    return self._error(500, "internal error", "server_error")
                if fault == "malformed":
                    return self._send(200, b'{"id": "chatcmpl-1", "choices": [{"index": 0, "mess')
                if fault == "timeout":
                    time.sleep(server.timeout_sleep)
                user = next(m["content"] for m in body["messages"] if m["role"] == "user")
                query = user.split("User query: ", 1)[-1]
                content = "Sure, these are the tags you asked for." if fault == "prose" else teacher_answer(query)
                resp = {
                    "id": f"chatcmpl-{server.requests}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "teacher"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": len(user.split()), "completion_tokens": len(content.split()),
                              "total_tokens": len(user.split()) + len(content.split())},
                }
                self._send(200, json.dumps(resp).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultyOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
