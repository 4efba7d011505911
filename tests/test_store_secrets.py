"""Secrets never leave the environment, and every store error is one line (issue 24): a URL with a user-info password
is refused for every kind without showing it, and a Qdrant rate limit is retried with bounded backoff and then
wrapped. (A canary password across a store's failure paths: tests/test_store_commit.py.)"""
from __future__ import annotations

import json

import pytest

from cli import main as cli
from stores.base import StoreError
from stores.qdrant_store import QdrantStore

CANARY = "canary-pw-7f3a"


@pytest.mark.parametrize("kind, url", [
    ("postgres", f"postgresql://embedder:{CANARY}@db:5432/search"),
    ("postgres", f"postgres://embedder:{CANARY}@db/search?sslmode=require"),
    ("qdrant", f"http://user:{CANARY}@qdrant.example:6333"),
    ("qdrant", f"https://user:{CANARY}@qdrant.example"),
])
def test_a_url_with_a_password_is_refused_in_one_line_without_it(kind, url, tmp_path, capsys):
  corpus = tmp_path / "c.jsonl"
  corpus.write_text('{"id": "a", "text": "the cat sat."}\n', encoding="utf-8")
  argv = ["run", "--model", "default", "--input", str(corpus), "--input-format", "jsonl", "--output",
          str(tmp_path / "o"), "--vector-store", kind, "--vector-store-url", url, "--vector-collection", "emb"]
  assert cli.main(argv) == 2
  captured = capsys.readouterr()
  err = captured.err.strip().splitlines()
  assert len(err) == 1 and "must not hold a password" in err[0]
  assert CANARY not in captured.err + captured.out
  assert not (tmp_path / "o").exists()


def test_a_qdrant_rate_limit_is_retried_with_bounded_backoff_then_one_line(monkeypatch):
  """A loopback endpoint stands in for a Qdrant server that answers 429 (with Retry-After) to every request."""
  import http.server  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel

  seen = []

  class Limited(http.server.BaseHTTPRequestHandler):
    def _answer(self):  # pylint: disable=invalid-name
      seen.append(self.path)
      self.rfile.read(int(self.headers.get("Content-Length") or 0))
      body = json.dumps({"status": {"error": "Too many requests"}, "time": 0.0}).encode()
      self.send_response(429)
      self.send_header("Retry-After", "0")
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args):  # pylint: disable=arguments-differ
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Limited)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    monkeypatch.setenv("QDRANT_API_KEY", CANARY)
    store = QdrantStore(f"http://127.0.0.1:{server.server_address[1]}", "n", retries=2)
    with pytest.raises(StoreError, match=r"rate-limited \(429\) after 3 attempts") as info:
      store.count()
  finally:
    server.shutdown()
    server.server_close()
  assert "\n" not in str(info.value) and CANARY not in str(info.value)
  assert len(seen) == 3
