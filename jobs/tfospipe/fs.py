"""File-system operations on any ``tf.io.gfile`` location, and the atomic commit every job uses.

A job is a transaction: it writes a staging directory next to its output, writes ``_manifest.json``
and ``_SUCCESS`` into it last, and publishes it with a rename. A failed or killed run leaves only a
hidden staging directory behind (removed by the next run); a rerun replaces the old output whole.
"""

import json
import os
import posixpath
import uuid

import tensorflow as tf

gfile = tf.io.gfile

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"  # "_" prefix: Spark, pyarrow and Hive readers skip it


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
    return gfile.exists(path)


def makedirs(path):
    gfile.makedirs(path)


def rmtree(path):
    if gfile.exists(path):
        if gfile.isdir(path):
            gfile.rmtree(path)
        else:
            gfile.remove(path)


def listdir(path):
    return sorted(gfile.listdir(path)) if gfile.isdir(path) else []


def glob(pattern):
    return sorted(gfile.glob(pattern))


def size(path):
    return gfile.stat(path).length


def read_bytes(path):
    with gfile.GFile(path, "rb") as f:
        return f.read()


def write_bytes(path, data):
    with gfile.GFile(path, "wb") as f:
        f.write(data)


def read_json(path):
    return json.loads(read_bytes(path).decode("utf-8"))


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))


def write_json_atomic(path, obj):
    """Write JSON so a reader sees the old file or the new one, never a partial one."""
    tmp = sibling(path, f".{basename(path)}.tmp-{uuid.uuid4().hex}")
    write_json(tmp, obj)
    gfile.rename(tmp, path, overwrite=True)


def copytree(src, dst):
    """Copy a directory tree (SavedModels are small, a few files)."""
    for dirpath, _dirs, files in gfile.walk(src):
        rel = dirpath[len(src.rstrip("/")):].lstrip("/")
        target = _join(dst, rel) if rel else dst
        gfile.makedirs(target)
        for name in files:
            gfile.copy(_join(dirpath, name), _join(target, name), overwrite=True)


def _join(a, b):
    return f"{a.rstrip('/')}/{b}" if "://" in a else os.path.join(a, b)


def is_committed(path):
    return gfile.exists(_join(path, SUCCESS))


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
        gfile.makedirs(head)
        for entry in gfile.listdir(head):
            entry = entry.rstrip("/")
            if entry.startswith(self._prefix_staging) or entry.startswith(self._prefix_trash):
                rmtree(_join(head, entry))
        gfile.makedirs(self.path)
        return self

    def file(self, *parts):
        return _join(self.path, "/".join(parts)) if "://" in self.path else os.path.join(self.path, *parts)

    def commit(self, manifest):
        """Write the manifest, then _SUCCESS, then publish by rename (replacing an older output)."""
        write_json(self.file(MANIFEST), manifest)
        write_bytes(self.file(SUCCESS), b"")
        if gfile.exists(self.final):
            gfile.rename(self.final, self._trash)
        gfile.rename(self.path, self.final)
        rmtree(self._trash)

    def __exit__(self, exc_type, exc, tb):
        if gfile.exists(self.path):
            rmtree(self.path)
        return False
