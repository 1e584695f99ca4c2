"""A tiny real OpenAI-compatible chat-completions server (stdlib only) for judge fault tests.

Modes (what ``POST /v1/chat/completions`` does):

* ``ok``: a well-formed verdict ``{"score": 7, "critique": "..."}``;
* ``slow``: like ``ok`` after ``delay`` seconds;
* ``garbage``: a completion whose content has no score;
* ``empty``: a completion with empty content;
* ``truncated``: JSON cut off before the score, ``finish_reason="length"``;
* ``invalid_json``: an HTTP body that is not JSON at all;
* ``unauthorized``: HTTP 401, as servers answer to a refused key;
* ``flaky``: HTTP 500 for the first ``fail_first`` requests, then ``ok``;
* ``no_json_mode``: HTTP 400 when ``response_format`` is sent, else ``ok``;
* ``trickle``: the whole HTTP response (status line, headers, an ``ok`` body) one byte
  every ``delay`` seconds, so that no single read ever waits long;
* ``content``: a completion whose content is the server's ``content`` text;
* ``echo``: a completion whose content is the response being graded (the text after
  ``## Response to grade``), so that fuzzing the policy's response fuzzes the verdict parser.

``GET /stats`` returns ``{"requests": n, "max_inflight": m}``. Run as a script
(``python judge_http_server.py MODE``) it serves on a free port of 127.0.0.1 and prints
``READY <port>`` once listening.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, mode: str, delay: float = 0.0, fail_first: int = 2, content: str = ""
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode, self.delay, self.fail_first = mode, delay, fail_first
        self.content = content
        self.closed = False
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()

    def server_close(self) -> None:
        self.closed = True  # a trickling handler stops at its next byte
        super().server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _completion(content: str | None, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "judge",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class _Handler(BaseHTTPRequestHandler):
    server: JudgeServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        s = self.server
        stats = {"requests": s.requests, "max_inflight": s.max_inflight}
        self._send(200, json.dumps(stats).encode())

    def do_POST(self) -> None:
        s = self.server
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        with s.lock:
            s.requests += 1
            n = s.requests
            s.inflight += 1
            s.max_inflight = max(s.max_inflight, s.inflight)
        try:
            self._answer(s, n, request)
        finally:
            with s.lock:
                s.inflight -= 1

    def _trickle(self, delay: float, body: bytes) -> None:
        raw = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.close_connection = True
        try:
            for i in range(len(raw)):
                if self.server.closed:
                    return
                self.wfile.write(raw[i : i + 1])
                self.wfile.flush()
                time.sleep(delay)
        except OSError:  # the client gave up: stop trickling
            pass

    def _answer(self, s: JudgeServer, n: int, request: dict[str, Any]) -> None:
        ok = json.dumps({"score": 7, "critique": "Mostly right, but add an example."})
        mode = s.mode
        if mode == "trickle":
            return self._trickle(s.delay or 0.1, json.dumps(_completion(ok)).encode())
        if s.delay:
            time.sleep(s.delay)
        if mode == "flaky" and n <= s.fail_first:
            body = {"error": {"message": "boom", "type": "server_error"}}
            return self._send(500, json.dumps(body).encode())
        if mode == "unauthorized":
            body = {"error": {"message": "bad key", "type": "invalid_request_error"}}
            return self._send(401, json.dumps(body).encode())
        if mode == "no_json_mode" and "response_format" in request:
            body = {"error": {"message": "response_format unsupported", "type": "bad_request"}}
            return self._send(400, json.dumps(body).encode())
        if mode == "invalid_json":
            return self._send(200, b'{"choices": [ this is not json')
        content: str | None = ok
        finish = "stop"
        if mode == "garbage":
            content = "I think this looks nice and friendly!"
        elif mode == "empty":
            content = ""
        elif mode == "truncated":
            content, finish = '{"critique": "The response misses the main', "length"
        elif mode == "content":
            content = s.content
        elif mode == "echo":
            prompt = str(request.get("messages", [{}])[-1].get("content", ""))
            graded = prompt.split("## Response to grade\n", 1)[-1]
            content = graded.rsplit("\n\nReply with the JSON object only", 1)[0]
        self._send(200, json.dumps(_completion(content, finish)).encode())


def main() -> None:
    server = JudgeServer(sys.argv[1] if len(sys.argv) > 1 else "ok")
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
