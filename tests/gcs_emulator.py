"""A local Google Cloud Storage for the tests: `gcp-storage-emulator` on a free loopback port, plus a loopback OAuth
token endpoint so that every process (the test process, multi-process DirectRunner workers, CLI subprocesses) gets
credentials at once instead of Beam's credential probing (google.auth.default retried with backoff).

Used by the `gcs` fixture in conftest.py, which sets the environment for the whole session.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Iterator

BUCKET = "b"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class _TokenHandler(http.server.BaseHTTPRequestHandler):
  """Answers any POST (an OAuth refresh) with a bearer token the emulator ignores."""

  def do_POST(self):  # noqa: N802  (http.server's naming)
    self.rfile.read(int(self.headers.get("Content-Length") or 0))
    body = json.dumps({"access_token": "emulator", "token_type": "Bearer", "expires_in": 3600}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):  # quiet
    pass


def _wait_for(url: str, process: subprocess.Popen, seconds: float = 30) -> None:
  deadline = time.time() + seconds
  while time.time() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f"gcp-storage-emulator exited with {process.returncode}")
    try:
      urllib.request.urlopen(url, timeout=1).read()  # noqa: S310  (loopback only)
      return
    except OSError:
      time.sleep(0.2)
  raise RuntimeError(f"gcp-storage-emulator did not answer at {url} within {seconds} s")


def _service_account(token_uri: str) -> dict:
  """A throw-away service account whose token endpoint is the loopback one (its key signs the token request
  locally; an `authorized_user` file would always refresh against Google's endpoint)."""
  from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
  from cryptography.hazmat.primitives.asymmetric import rsa  # pylint: disable=import-outside-toplevel
  key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
  pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()).decode()
  return {"type": "service_account", "project_id": "emulator", "private_key_id": "emulator", "private_key": pem,
          "client_email": "tests@emulator.iam.gserviceaccount.com", "client_id": "0", "token_uri": token_uri}


@contextlib.contextmanager
def running(workdir: str) -> Iterator[dict]:
  """Starts the emulator (bucket `b`, in memory) and the token endpoint; yields the environment to set."""
  exe = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable)) or shutil.which(
      "gcp-storage-emulator")
  if exe is None:
    raise RuntimeError("gcp-storage-emulator is not installed: run scripts/setup_env.sh (the test extra has it)")
  port = _free_port()
  log = open(os.path.join(workdir, "gcs-emulator.log"), "wb")  # pylint: disable=consider-using-with
  process = subprocess.Popen([exe, "start", "--host", "127.0.0.1", "--port", str(port), "--default-bucket", BUCKET,
                              "--in-memory"], stdout=log, stderr=subprocess.STDOUT)
  token_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
  threading.Thread(target=token_server.serve_forever, daemon=True).start()
  credentials = os.path.join(workdir, "emulator-credentials.json")
  with open(credentials, "w", encoding="utf-8") as f:
    json.dump(_service_account(f"http://127.0.0.1:{token_server.server_port}/token"), f)
  try:
    host = f"http://127.0.0.1:{port}"
    _wait_for(f"{host}/storage/v1/b/{BUCKET}", process)
    yield {"STORAGE_EMULATOR_HOST": host, "GOOGLE_APPLICATION_CREDENTIALS": credentials,
           "NO_GCE_CHECK": "true", "GOOGLE_CLOUD_PROJECT": "emulator"}
  finally:
    token_server.shutdown()
    process.terminate()
    try:
      process.wait(10)
    except subprocess.TimeoutExpired:
      process.kill()
    log.close()
