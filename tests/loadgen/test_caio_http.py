"""locust/caio_http.py: the prepared request heads, and the request events a real loopback
server's answers make (run in a subprocess: caio_http imports locust, which monkey-patches)."""

from __future__ import annotations

import json
import subprocess
import sys

from caio_testing import LOCUST_DIR

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import caio_http

url = sys.argv[2]
out = {}
prepared = caio_http.Prepared("https://h.example:8443/v1/m:predict?x=1", [b"{}", b"[1,2]"], "ua")
out["head"] = prepared.wire(1, None).decode()
out["head_token"] = prepared.wire(0, "Bearer t1").decode()
out["head_again"] = prepared.wire(0, None).decode()

class Events:
    def __init__(self):
        self.seen = []
    def fire(self, **kw):
        response = kw.pop("response")
        exc = kw.pop("exception")
        self.seen.append({**kw, "status": response.status_code,
                          "exception": type(exc).__name__ if exc else None,
                          "error": str(exc) if exc else None})

events = Events()
prepared = caio_http.Prepared(url, [b'{"instances":[1]}'], "caio-bench")
client = caio_http.PredictClient(url, prepared, events, name="predict:s",
                                 context={"signature": "s"}, timeout_s=5.0)
sent = [client.post(0) for _ in range(10)]  # the 7th: 200 with error, the 10th: a 500
sent.append(client.post(0, start_time=1.0, intended_perf=0.0))
refused = caio_http.PredictClient("http://127.0.0.1:9/x", prepared, events, name="predict:s",
                                  context={"signature": "s"}, timeout_s=2.0)
sent.append(refused.post(0))
out["sent_ms"] = sent
out["events"] = events.seen
print(json.dumps(out))
"""


def test_prepared_heads_and_request_events(predict_server):
    done = subprocess.run([sys.executable, "-c", PROBE, str(LOCUST_DIR), predict_server.url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["head"] == ("POST /v1/m:predict?x=1 HTTP/1.1\r\nHost: h.example:8443\r\n"
                           "User-Agent: ua\r\nContent-Type: application/json\r\n"
                           "Content-Length: 5\r\n\r\n[1,2]")
    assert "\r\nAuthorization: Bearer t1\r\nContent-Length: 2\r\n\r\n{}" in out["head_token"]
    assert "Authorization" not in out["head_again"]  # rebuilt when the token changes

    events = out["events"]
    assert len(events) == 12 and predict_server.counts
    for event in events:
        assert event["request_type"] == "POST" and event["name"] == "predict:s"
        assert event["context"] == {"signature": "s"}
    ok = [e for e in events[:10] if e["exception"] is None]
    assert len(ok) == 8 and all(e["status"] == 200 and e["response_length"] > 0 for e in ok)
    assert events[6]["status"] == 200 and events[6]["exception"] == "CatchResponseError"
    assert events[6]["error"].startswith("error in 200 response:")
    assert events[9]["status"] == 500 and events[9]["error"].startswith("HTTP 500:")
    for event, sent_ms in zip(events[:10], out["sent_ms"], strict=False):
        assert event["response_time"] == sent_ms > 0  # closed loop: from the actual send
    # open loop: start_time and latency from the intended send (perf_counter 0: long ago)
    assert events[10]["start_time"] == 1.0 and events[10]["response_time"] > out["sent_ms"][10]
    # no response: status 0, the exception, no latency from an actual send
    assert events[11]["status"] == 0 and events[11]["exception"] == "ConnectionRefusedError"
    assert out["sent_ms"][11] is None
