"""File-system operations on local paths and ``tf.io.gfile`` URIs, and the atomic commit every job uses.

A job is a transaction: it writes a staging directory next to its output, writes ``_manifest.json``
and ``_SUCCESS`` into it last, and publishes it with a rename. A failed or killed run leaves only a
hidden staging directory behind (removed by the next run); a rerun replaces the old output whole.
"""

import glob as _glob
import json
import os
import posixpath
import shutil
import uuid

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"  # "_" prefix: Spark, pyarrow and Hive readers skip it


def _remote(path):
    """A URI (hdfs://, gs://, s3://...) goes through tf.io.gfile; a local path through the OS, without
    importing TensorFlow (the convert job never needs it)."""
    return "://" in path and not path.startswith("file://")


def _local(path):
    return path[len("file://"):] if path.startswith("file://") else path


def _gfile():
    import tensorflow as tf
    return tf.io.gfile


def _split(path):
    if "://" in path:
        return posixpath.split(path.rstrip("/"))
    return os.path.split(path.rstrip("/"))


def parent(path):
    return _split(path)[0]


def basename(path):
    return _split(path)[1]


def sibling(path, name):
    head = parent(path)
    return f"{head}/{name}" if "://" in path else os.path.join(head, name)


def exists(path):
    return _gfile().exists(path) if _remote(path) else os.path.exists(_local(path))


def makedirs(path):
    if _remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(_local(path), exist_ok=True)


def rmtree(path):
    if _remote(path):
        g = _gfile()
        if g.exists(path):
            g.rmtree(path) if g.isdir(path) else g.remove(path)
    elif os.path.isdir(_local(path)):
        shutil.rmtree(_local(path))
    elif os.path.lexists(_local(path)):
        os.remove(_local(path))


def isdir(path):
    return _gfile().isdir(path) if _remote(path) else os.path.isdir(_local(path))


def listdir(path):
    if _remote(path):
        g = _gfile()
        return sorted(e.rstrip("/") for e in g.listdir(path)) if g.isdir(path) else []
    return sorted(os.listdir(_local(path))) if os.path.isdir(_local(path)) else []


def glob(pattern):
    return sorted(_gfile().glob(pattern)) if _remote(pattern) else sorted(_glob.glob(_local(pattern)))


def size(path):
    return _gfile().stat(path).length if _remote(path) else os.path.getsize(_local(path))


def mtime(path):
    return _gfile().stat(path).mtime_nsec / 1e9 if _remote(path) else os.path.getmtime(_local(path))


def rename(src, dst):
    """Rename a file or directory; a file at ``dst`` is replaced."""
    if _remote(src):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(_local(src), _local(dst))


def read_bytes(path):
    if _remote(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(_local(path), "rb") as f:
        return f.read()


def read_range(path, start, end):
    """Bytes ``[start, end)`` of a file."""
    if _remote(path):
        with _gfile().GFile(path, "rb") as f:
            f.seek(start)
            return f.read(end - start)
    with open(_local(path), "rb") as f:
        f.seek(start)
        return f.read(end - start)


def write_bytes(path, data):
    if _remote(path):
        with _gfile().GFile(path, "wb") as f:
            f.write(data)
    else:
        with open(_local(path), "wb") as f:
            f.write(data)


def open_read(path):
    """A binary file object for reading (local file or GFile)."""
    return _gfile().GFile(path, "rb") if _remote(path) else open(_local(path), "rb")


def open_write(path):
    """A binary file object for writing (local file or GFile)."""
    return _gfile().GFile(path, "wb") if _remote(path) else open(_local(path), "wb")


def read_json(path):
    return json.loads(read_bytes(path).decode("utf-8"))


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))


def write_json_atomic(path, obj):
    """Write JSON so a reader sees the old file or the new one, never a partial one."""
    tmp = sibling(path, f".{basename(path)}.tmp-{uuid.uuid4().hex}")
    write_json(tmp, obj)
    rename(tmp, path)


def copytree(src, dst):
    """Copy a directory tree (SavedModels are small, a few files)."""
    if not _remote(src) and not _remote(dst):
        shutil.copytree(_local(src), _local(dst), dirs_exist_ok=True)
        return
    g = _gfile()
    for dirpath, _dirs, files in g.walk(src):
        rel = dirpath[len(src.rstrip("/")):].lstrip("/")
        target = _join(dst, rel) if rel else dst
        g.makedirs(target)
        for name in files:
            g.copy(_join(dirpath, name), _join(target, name), overwrite=True)


def _join(a, b):
    return f"{a.rstrip('/')}/{b}" if "://" in a else os.path.join(a, b)


def is_committed(path):
    return exists(_join(path, SUCCESS))


class Staging:
    """A staging directory beside ``final`` that becomes ``final`` on commit.

    Leftovers of earlier failed attempts (``.staging-*``/``.trash-*`` of the same output) are
    removed when a new attempt starts, so a rerun is always clean.
    """

    def __init__(self, final):
        self.final = final.rstrip("/")
        name = basename(self.final)
        self._prefix_staging = f".{name}.staging-"
        self._prefix_trash = f".{name}.trash-"
        token = uuid.uuid4().hex[:12]
        self.path = sibling(self.final, self._prefix_staging + token)
        self._trash = sibling(self.final, self._prefix_trash + token)

    def __enter__(self):
        head = parent(self.final)
        makedirs(head)
        for entry in listdir(head):
            if entry.startswith(self._prefix_staging) or entry.startswith(self._prefix_trash):
                rmtree(_join(head, entry))
        makedirs(self.path)
        return self

    def file(self, *parts):
        return _join(self.path, "/".join(parts)) if "://" in self.path else os.path.join(self.path, *parts)

    def commit(self, manifest):
        """Write the manifest, then _SUCCESS, then publish by rename (replacing an older output)."""
        write_json(self.file(MANIFEST), manifest)
        write_bytes(self.file(SUCCESS), b"")
        if exists(self.final):
            rename(self.final, self._trash)
        rename(self.path, self.final)
        rmtree(self._trash)

    def __exit__(self, exc_type, exc, tb):
        rmtree(self.path)
        return False
