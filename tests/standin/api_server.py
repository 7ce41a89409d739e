"""A stand-in for `python -m vllm.entrypoints.openai.api_server` on test hosts, for tests of orch's control
path where vLLM's own behaviour is not what is tested (locks, kills, host faults, ordering).

It answers what orch's readiness gate asks (/health, /v1/models, chat completions plain and streamed) and
/version, after STANDIN_DELAY_S seconds (a model load). STANDIN_BROKEN=1 makes every completion fail, as
a dead engine does while /health still answers 200. Only the standard library: it runs on any host Python.
"""

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--model")
parser.add_argument("--served-model-name")
parser.add_argument("--host", default="0.0.0.0")
parser.add_argument("--port", type=int, default=8000)
args, _ = parser.parse_known_args()
NAME = args.served_model_name or args.model
BROKEN = os.environ.get("STANDIN_BROKEN") == "1"
time.sleep(float(os.environ.get("STANDIN_DELAY_S", "0")))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:
        return None

    def send(self, code: int, body: str, ctype: str = "application/json") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            return self.send(200, "")
        if self.path == "/version":
            return self.send(200, json.dumps({"version": "0.0.0+standin"}))
        if self.path == "/v1/models":
            return self.send(200, json.dumps({"object": "list", "data": [{"id": NAME, "object": "model"}]}))
        if self.path == "/metrics":
            return self.send(200, "", "text/plain")
        return self.send(404, "{}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        if BROKEN:
            return self.send(500, json.dumps({"error": "EngineDeadError (stand-in)"}))
        base = {"id": "x", "created": 0, "model": NAME}
        if request.get("stream"):
            delta = {"index": 0, "delta": {"role": "assistant", "content": "a"}, "finish_reason": None}
            end = {"index": 0, "delta": {}, "finish_reason": "length"}
            chunks = [dict(base, object="chat.completion.chunk", choices=[c]) for c in (delta, end)]
            body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return self.send(200, body, "text/event-stream")
        message = {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "length"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        return self.send(
            200, json.dumps(dict(base, object="chat.completion", choices=[message], usage=usage))
        )


ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
