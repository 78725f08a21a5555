"""A small OpenAI-compatible server for the gateway's tests (standard
library only): the gateway's job is metering and policy, not the model.

    python3 llm_server.py PORT LOG

POST /v1/chat/completions answers "Hello!" in three content chunks when
`stream` is true (then a last chunk with `usage` if
`stream_options.include_usage` asks for it, then `[DONE]`), or as one JSON
answer with `usage` {prompt_tokens: 7, completion_tokens: 5, or the
request's `max_tokens` when it sets one}. A message
"cut" makes a stream stop after two chunks, the connection closed. POST
/v1/embeddings answers with `usage` {prompt_tokens: 4, total_tokens: 4}.
A message "slow" is answered after 2 s. Every request's body is appended
to LOG as one JSON line.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, log = int(sys.argv[1]), sys.argv[2]


class Model(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        request = json.loads(self.rfile.read(length))
        with open(log, "a") as out:
            out.write(json.dumps({"path": self.path, "body": request}) + "\n")
        if self.path.endswith("/embeddings"):
            return self.answer({"object": "list", "data": [{"embedding": [0.1, 0.2], "index": 0}],
                                "model": request["model"], "usage": {"prompt_tokens": 4, "total_tokens": 4}})
        if request["messages"][-1]["content"] == "slow":
            time.sleep(2)
        if not request.get("stream"):
            return self.answer({"id": "c1", "object": "chat.completion", "model": request["model"],
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}}],
                                "usage": {"prompt_tokens": 7, "completion_tokens": request.get("max_tokens", 5)}})
        cut = request["messages"][-1]["content"] == "cut"
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def event(body):
            data = f"data: {body}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        for i, piece in enumerate(["Hel", "lo", "!"]):
            if cut and i == 2:
                self.close_connection = True
                return
            event(json.dumps({"object": "chat.completion.chunk",
                              "choices": [{"index": 0, "delta": {"content": piece}}]}))
            time.sleep(0.05)
        if (request.get("stream_options") or {}).get("include_usage"):
            event(json.dumps({"object": "chat.completion.chunk", "choices": [],
                              "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}))
        event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")


ThreadingHTTPServer(("127.0.0.1", port), Model).serve_forever()
