"""Build the ``--py-files`` zip that ships this package to the executors.

Built from the source at submit time (never committed), named by a hash of its content, so
concurrent tasks share one file and a changed source always yields a new zip.
"""

import hashlib
import os
import zipfile

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
JOBS_DIR = os.path.dirname(PACKAGE_DIR)


def _sources():
    for dirpath, dirnames, filenames in os.walk(PACKAGE_DIR):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                full = os.path.join(dirpath, name)
                yield full, os.path.relpath(full, JOBS_DIR)


def build_zip(dest_dir):
    """Path of ``tfospipe-<hash>.zip`` in ``dest_dir``, written if not there yet."""
    digest = hashlib.sha256()
    sources = list(_sources())
    for full, rel in sources:
        digest.update(rel.encode())
        with open(full, "rb") as f:
            digest.update(f.read())
    os.makedirs(dest_dir, exist_ok=True)
    path = os.path.join(dest_dir, f"tfospipe-{digest.hexdigest()[:16]}.zip")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for full, rel in sources:
                z.write(full, rel)
        os.replace(tmp, path)
    return path
