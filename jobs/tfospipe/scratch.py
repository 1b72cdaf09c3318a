"""scratch: executor-local staging for the TensorFlow side on roots ``tf.io.gfile`` cannot reach.

TensorFlow 2.21's ``tf.io.gfile`` (under tf.data, SavedModel loading and export, checkpoints, TensorBoard
logs) reaches local paths, ``file://`` and ``gs://`` only (``fs.Scheme.tf_gfile`` says which scheme it
reaches). On the other roots the pipeline accepts (``s3://``, ``s3a://``, ``hdfs://``, ``abfs://``)
TensorFlow works on local copies that this module makes and publishes through the storage layer (``fs``):

* :func:`local_copy` downloads a file or directory (a SavedModel, a TFRecord shard) once per process
  and keeps it for the process's life, so a model is loaded from one download per executor;
* :func:`publish` and :func:`sync` upload a local directory (an export, BackupAndRestore state,
  TensorBoard logs); :func:`staged_dir` is a directory written locally and uploaded when it is complete.

Local and ``gs://`` roots keep TensorFlow's own path: every function here returns or uses the remote
path itself there, and nothing is copied.

Where scratch lives: one directory per process, ``tfos-scratch-<pid>-*`` under the first directory of
``SPARK_LOCAL_DIRS`` (what Spark sets for its Python workers: the executor's local directories, under
``spark.local.dir``; on YARN the container's directories), else under the system temporary directory
(``TMPDIR``, ``/tmp``) on the driver. How it is cleaned: the jobs call :func:`cleanup` when a node or
job ends; an ``atexit`` handler removes it when the process exits normally; and Spark removes its
local directories when the application ends (standalone workers, YARN), which covers processes killed
before either ran.
"""

import atexit
import contextlib
import hashlib
import os
import shutil
import tempfile
from typing import Iterable, Iterator

from . import fs

_DIR = None    # this process's scratch directory, made on first use
_COPIES = {}   # remote path -> local copy, for this process


def base_dir() -> str:
    """Where scratch directories are made: the first of ``SPARK_LOCAL_DIRS`` (comma-separated, set by
    Spark in executors), else the system temporary directory."""
    first = os.environ.get("SPARK_LOCAL_DIRS", "").split(",")[0].strip()
    return first or tempfile.gettempdir()


def scratch_dir() -> str:
    """This process's scratch directory (``<base_dir>/tfos-scratch-<pid>-XXXX``), made on first use and
    removed at exit (``atexit``) or by :func:`cleanup`."""
    global _DIR
    if _DIR is None or not os.path.isdir(_DIR):
        os.makedirs(base_dir(), exist_ok=True)
        _DIR = tempfile.mkdtemp(prefix=f"tfos-scratch-{os.getpid()}-", dir=base_dir())
        atexit.register(shutil.rmtree, _DIR, True)
    return _DIR


def cleanup() -> None:
    """Remove this process's scratch directory and forget its copies (a later call makes a new one)."""
    global _DIR
    if _DIR is not None:
        shutil.rmtree(_DIR, ignore_errors=True)
    _DIR = None
    _COPIES.clear()


def local_copy(path: str) -> str:
    """A path TensorFlow can open holding what is at ``path`` (a file, or a directory tree).

    ``path`` itself when ``tf.io.gfile`` reaches it (``fs.scheme_of(path).tf_gfile``); else a copy in this process's scratch directory,
    downloaded on the first call for ``path`` and returned from the cache afterwards (as long as it is
    there). Raises FileNotFoundError when nothing is at ``path``, fs.StorageError when the store refuses.
    """
    if fs.scheme_of(path).tf_gfile:
        return path
    cached = _COPIES.get(path)
    if cached and os.path.exists(cached):
        return cached
    holder = os.path.join(scratch_dir(), hashlib.sha1(path.encode("utf-8")).hexdigest()[:16])
    target = os.path.join(holder, fs.basename(path) or "copy")
    shutil.rmtree(holder, ignore_errors=True)
    os.makedirs(holder)
    if fs.isdir(path):
        fs.copytree(path, target)
    else:
        with fs.open_read(path) as fin, open(target, "wb") as fout:
            shutil.copyfileobj(fin, fout, 8 << 20)
    _COPIES[path] = target
    return target


def local_copies(paths: Iterable[str]) -> list[str]:
    """:func:`local_copy` of each of ``paths``, in order."""
    return [local_copy(p) for p in paths]


def local_files(root: str) -> list[str]:
    """Paths relative to ``root`` (with '/') of the files under the local directory ``root``, sorted."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        found += [name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}" for name in files]
    return sorted(found)


def _remote_files(remote_dir):
    head = remote_dir.rstrip("/")
    found = []
    for dirpath, _dirs, files in fs.walk(remote_dir):
        rel = dirpath.rstrip("/")[len(head):].strip("/")
        found += [f"{rel}/{name}" if rel else name for name in files]
    return found


def sync(local_dir: str, remote_dir: str, last: tuple[str, ...] = (), prune: bool = True) -> None:
    """Make ``remote_dir`` hold the files of ``local_dir``: upload each (whole; files named in ``last``,
    e.g. a checkpoint's ``checkpoint`` index, after all others, so a reader never finds it naming files
    not there yet), then with ``prune`` remove remote files no longer present locally. A missing
    ``local_dir`` uploads nothing."""
    names = local_files(local_dir) if os.path.isdir(local_dir) else []
    ordered = [n for n in names if n.rsplit("/", 1)[-1] not in last] + \
              [n for n in names if n.rsplit("/", 1)[-1] in last]
    for name in ordered:
        with open(os.path.join(local_dir, *name.split("/")), "rb") as fin, \
                fs.open_write(f"{remote_dir.rstrip('/')}/{name}") as fout:
            shutil.copyfileobj(fin, fout, 8 << 20)
    if prune:
        keep = set(names)
        for name in _remote_files(remote_dir):
            if name not in keep:
                fs.rmtree(f"{remote_dir.rstrip('/')}/{name}")


def publish(local_dir: str, remote_dir: str) -> None:
    """Upload the directory tree ``local_dir`` into ``remote_dir`` (files there replaced; fs.copytree)."""
    fs.copytree(local_dir, remote_dir)


@contextlib.contextmanager
def staged_dir(remote_dir: str) -> Iterator[str]:
    """A directory to write ``remote_dir``'s content into: ``remote_dir`` itself when ``tf.io.gfile``
    reaches it (``fs.scheme_of(remote_dir).tf_gfile``); else a fresh local directory in scratch, uploaded to ``remote_dir``
    (:func:`publish`) when the block ends without an exception, and removed in any case."""
    if fs.scheme_of(remote_dir).tf_gfile:
        yield remote_dir
        return
    local = tempfile.mkdtemp(prefix="staged-", dir=scratch_dir())
    try:
        yield local
        publish(local, remote_dir)
    finally:
        shutil.rmtree(local, ignore_errors=True)
