"""One path layer for everything nopejax reads or writes: local paths and bucket URLs alike.

Every path goes through `path()`, an etils `epath.Path` (what orbax and TFDS use): a local path
is expanded (`~`) and made absolute, a URL (`gs://`, `s3://`) passes through untouched, where
`os.path.abspath` would turn `gs://b/run` into a local directory `./gs:/b/run`. `gs://` goes to
gcsfs here and to tensorstore inside orbax; both reach the real service, or the emulator named by
`STORAGE_EMULATOR_HOST` and `TENSORSTORE_GCS_HTTP_URL` (the tests start one on 127.0.0.1).

A bucket has no rename and no locks. A local file is written to a temporary name and renamed; an
object is written whole in one request, which is atomic by itself. What several processes build
once (datasets, tokenizers) is built on local disk under a local lock and published to the
bucket with a marker written last (`synced_dir`).
"""

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid

import fsspec
import jax
from etils import epath

REMOTE_PREFIXES = ("gs://", "s3://")
# Marks a directory `synced_dir` published completely to a bucket; written after every file.
COMPLETE = ".nopejax_complete"


class _QuietBucketType(logging.Filter):
  """gcsfs warns on every new handle when it cannot ask for the bucket's namespace type
  (an emulator, or credentials without that permission); the fallback it takes is the right one."""

  def filter(self, record):
    return "Could not determine bucket type" not in record.getMessage()


logging.getLogger("gcsfs").addFilter(_QuietBucketType())
# Other processes write the same bucket (the hosts of a pod, a resumed job): a listing must come
# from the server, not from what this process listed before.
fsspec.config.conf.setdefault("gcs", {})["use_listings_cache"] = False


def is_remote(p) -> bool:
  return os.fspath(p).startswith(REMOTE_PREFIXES)


def path(p) -> epath.Path:
  """`p` as an epath.Path: URLs untouched, local paths expanded and absolute."""
  s = os.fspath(p)
  if is_remote(s):
    return epath.Path(s)
  return epath.Path(os.path.abspath(os.path.expanduser(s)))


def cache_home() -> epath.Path:
  """$XDG_CACHE_HOME/nopejax, else ~/.cache/nopejax: local caches (data, compiled programs)."""
  return path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "nopejax"


def write_bytes(p, data: bytes) -> None:
  """Writes `data` whole: readers see the old file or the new one, never a part."""
  p = path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(p):
    p.write_bytes(data)  # one object, one request: atomic by itself
    return
  tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
  tmp.write_bytes(data)
  os.replace(tmp, p)


def write_text(p, text: str) -> None:
  write_bytes(p, text.encode())


def read_json(p):
  return json.loads(path(p).read_text())


def write_json(p, obj, **kwargs) -> None:
  write_text(p, json.dumps(obj, **kwargs))


def check_writable(p, flag: str = "--workdir") -> epath.Path:
  """Creates directory `p` and proves it writable, or raises one line naming `flag` and `p`."""
  p = path(p)
  probe = p / f".write_test.{uuid.uuid4().hex}"
  try:
    p.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # OSError locally; gcsfs and google-auth raise their own types
    why = getattr(e, "strerror", None) or str(e).splitlines()[0][:200] or type(e).__name__
    raise ValueError(f"{flag}: cannot write to {os.fspath(p)!r}: {why}") from None
  return p


def walk_files(root):
  """(relative posix path, Path) of every file under `root`, sorted; one listing per directory
  (a bucket refuses recursive globs)."""
  root = path(root)
  out = []
  pending = [root]
  while pending:
    d = pending.pop()
    for child in d.iterdir():
      if child.is_dir():
        pending.append(child)
      else:
        out.append((os.path.relpath(os.fspath(child), os.fspath(root)), child))
  return sorted(out, key=lambda pair: pair[0])


def copy_tree(src, dst, skip: str = "") -> None:
  """Copies every file under `src` to the same place under `dst` (local or remote, either way),
  but files named `skip`."""
  dst = path(dst)
  for rel, f in walk_files(src):
    if skip and f.name == skip:
      continue
    target = dst / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(f.read_bytes())


def remove_tree(p) -> None:
  p = path(p)
  if p.exists():
    p.rmtree()


def move_tree(src, dst) -> None:
  """Moves a directory: a rename on local disk; on a bucket a copy, then the source removed."""
  src, dst = path(src), path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  if not is_remote(src) and not is_remote(dst):
    os.replace(src, dst)
    return
  copy_tree(src, dst)
  remove_tree(src)


@contextlib.contextmanager
def local_lock(directory, name: str):
  """An exclusive lock among the processes of this machine (flock on a local file)."""
  directory = path(directory)
  assert not is_remote(directory), directory
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / f".{name.replace('/', '_')}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def local_mirror(root) -> epath.Path:
  """Where a remote `root` is mirrored on this machine (a local `root` is its own mirror)."""
  root = path(root)
  if not is_remote(root):
    return root
  scheme, rest = os.fspath(root).split("://", 1)
  return cache_home() / "mirror" / scheme / rest


def synced_dir(root, name: str, build, *, poll_s: float = 2.0) -> epath.Path:
  """Local directory `root/name`, filled once by `build(local_dir)`, shared by every process and
  job that uses `root`.

  Local `root`: processes of this machine take turns under a file lock; `build` must reuse what
  a previous call left (TFDS does). Remote `root`: process 0 of the job builds it in this
  machine's mirror and uploads it with the marker written last, so a reader never takes a
  half-uploaded directory for a whole one; the other processes wait for the marker and download
  it (a tokenizer is trained, a corpus tokenized, once per job, not once per host). Building is
  deterministic, so two jobs that race publish the same bytes.
  """
  remote = path(root) / name
  local = local_mirror(root) / name
  if not is_remote(root):
    with local_lock(local_mirror(root), name):
      build(local)
    return local
  primary = jax.process_index() == 0
  if not primary and not (local / COMPLETE).exists() and not (remote / COMPLETE).exists():
    # Outside the lock: process 0 may be building into this same mirror.
    logging.info("waiting for process 0 to publish %s", os.fspath(remote))
    while not (remote / COMPLETE).exists():
      time.sleep(poll_s)
  with local_lock(local_mirror(root), name):
    # Markers are never copied: each is written last, after the files it vouches for.
    if not (local / COMPLETE).exists():
      if (remote / COMPLETE).exists():
        copy_tree(remote, local, skip=COMPLETE)
      else:
        build(local)
    if primary and not (remote / COMPLETE).exists():
      copy_tree(local, remote, skip=COMPLETE)
      write_text(remote / COMPLETE, "ok")
    if not (local / COMPLETE).exists():
      write_text(local / COMPLETE, "ok")
  return local
