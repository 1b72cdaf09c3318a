"""File-system operations on local paths and remote URIs, and the atomic commit every job uses.

One layer for every Python-side read and write of the pipeline, on the driver and the executors.
What each store can do is said once, by its :class:`Scheme` (:func:`scheme_of`).
Local paths and ``file://`` go through the OS (``os``/``shutil``, no extra import); the remote
schemes of :data:`SCHEMES` go through fsspec (s3fs, gcsfs, adlfs; HDFS through fsspec's wrapper of
pyarrow's ``HadoopFileSystem``). fsspec because Airflow 3's ``ObjectStoragePath`` and its
connections are built on it, and s3fs/gcsfs/adlfs are the maintained clients of those stores. Any
other scheme is refused (:func:`check_root`) with a message naming the supported ones.

Credentials come from each client's standard environment variables (:data:`SCHEMES` names them),
never from the URI. Missing or wrong credentials, or an unreachable store, raise
:class:`StorageError`, whose one-line message names the path and what to set, never a secret value.

A job is a transaction (:class:`Staging`), under one protocol for every store, rename or not: each
attempt writes an immutable attempt directory of its own (``_manifest.json``, then ``_SUCCESS``, last),
and publishes it by a conditional write of the output's pointer (:func:`write_if`: ``If-Match`` /
``If-None-Match: *`` on S3; a symbolic link renamed under an ``flock`` locally). Readers resolve the
pointer (:func:`resolve`); superseded attempts are removed once unreferenced and past a grace period
(:func:`collect_attempts`). A failed or killed run leaves the previous output as it was; a rerun
replaces it whole. A store this layer cannot write conditionally is refused (:func:`check_commits`)
unless the single-writer mode is on (:data:`SINGLE_WRITER_ENV`).
"""

import contextlib
import glob as _glob
import json
import os
import posixpath
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import IO, Any, Iterator

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"  # "_" prefix: Spark, pyarrow and Hive readers skip it


class StorageError(Exception):
    """A root or path the pipeline cannot use: an unsupported scheme, a missing client package,
    missing or refused credentials, or an unreachable store. The message is one line naming the
    path and what to set; it never holds a secret value."""


@dataclass(frozen=True)
class Scheme:
    """What one storage scheme can do and how each side of the pipeline reaches it: the one place
    that says so. Every question about a store (publish by rename or by copies, make directories or
    not, TensorFlow directly or through scratch copies, Spark's Parquet writer or ``fs``) asks the
    :class:`Scheme` of its path (:func:`scheme_of`).

    Where the facts come from:

    * ``atomic_rename``: POSIX ``rename(2)`` (local), the HDFS NameNode's ``rename`` (one metadata
      operation); S3, GCS and Azure Blob (through adlfs's blob API) have no rename, fsspec's ``mv`` is a
      copy and a delete. Where a root's outputs are published: :class:`Staging`.
    * ``conditional_write``: a create-only write the store offers: ``O_CREAT|O_EXCL`` (local), HDFS
      ``create`` without overwrite, S3 ``PutObject`` with ``If-None-Match: *`` (since August 2024), GCS
      ``ifGenerationMatch=0``, Azure Blob ``If-None-Match: *``, and a replace-only-if-unchanged write
      (S3 ``If-Match: <ETag>``, GCS ``ifGenerationMatch=<generation>``, Azure ``If-Match``). True here only
      where this layer performs both (:func:`write_if`): local (an exclusive ``link(2)``, and a rename
      under an ``flock``) and S3 (s3fs passes ``IfNoneMatch``/``IfMatch`` to botocore's ``PutObject``).
      gcsfs 2026.10 and pyarrow's HDFS client expose no such write, and adlfs's is not tested here, so
      ``gs``, ``hdfs`` and ``abfs`` roots are refused for writing (:func:`check_commits`) unless the
      single-writer mode is chosen (:data:`SINGLE_WRITER_ENV`).
    * ``consistent_listing``: a listing shows every write that finished before it: local and HDFS
      (NameNode), S3 (strong read-after-write and list consistency since December 2020), GCS and Azure
      Blob (strong). The clients are built without fsspec's listings cache (:func:`_client`), so the
      driver sees at once what the executors wrote.
    * ``tf_gfile``: TensorFlow 2.21's ``tf.io.gfile`` (tf.data, SavedModel, checkpoints, TensorBoard)
      reaches local paths, ``file://`` and ``gs://`` only; S3 and HDFS were left to ``tensorflow-io``,
      which has no release for TF >= 2.17. Elsewhere TensorFlow works on executor-local copies
      (``scratch``).
    * ``spark_parquet``: Spark's own Parquet writer reaches the store through the Hadoop file systems
      every Spark distribution ships (local, ``hdfs://``) or the GCS connector (Dataproc); S3A and ABFS
      need Hadoop connector jars the executors' environment does not carry, so there the executors
      write their Parquet parts through ``fs``.
    """
    name: str                  # canonical scheme ("local" for paths and file://; s3a:// is "s3", abfss:// "abfs")
    protocol: str | None       # fsspec protocol; None: the OS (os/shutil), no client library
    package: str               # pip package that implements it (pinned in requirements.txt)
    module: str                # its import name
    atomic_rename: bool        # a directory rename is atomic
    conditional_write: bool    # write_if performs create-only and replace-if-unchanged writes on it
    consistent_listing: bool   # listings show every finished write
    tf_gfile: bool             # tf.io.gfile reaches it; else TensorFlow goes through scratch copies
    spark_parquet: bool        # Spark's Parquet writer reaches it; else executors write through fs
    credentials: str           # what to set, said in every StorageError about this scheme
    env: tuple = ()            # variables the client reads (a change builds a new client)
    forward: tuple = ()        # those executors need from the driver (not paths of the driver's files)

    @property
    def remote(self) -> bool:
        """Reached through an fsspec client (not the OS)."""
        return self.protocol is not None

    @property
    def object_store(self) -> bool:
        """No directories and no rename: ``makedirs`` does nothing, and a commit is published by a
        pointer object (``_COMMIT.json``) written conditionally."""
        return self.remote and not self.atomic_rename


LOCAL = Scheme("local", None, "", "", atomic_rename=True, conditional_write=True, consistent_listing=True,
               tf_gfile=True, spark_parquet=True,
               credentials="check the path's file permissions; every executor must see the same path")
_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_CA_BUNDLE",
        "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")
_AWS_FORWARD = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")
_S3 = Scheme("s3", "s3", "s3fs", "s3fs", atomic_rename=False, conditional_write=True, consistent_listing=True,
             tf_gfile=False, spark_parquet=False,
             credentials="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary "
             "keys) or give the node an IAM role; for an S3-compatible store set AWS_ENDPOINT_URL_S3 to its URL",
             env=_AWS, forward=_AWS_FORWARD)
_AZURE = ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
          "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_CLIENT_ID", "AZURE_STORAGE_CLIENT_SECRET",
          "AZURE_STORAGE_TENANT_ID", "AZURE_STORAGE_ANON", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
          "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE")
_ABFS = Scheme("abfs", "abfs", "adlfs", "adlfs", atomic_rename=False, conditional_write=False, consistent_listing=True,
               tf_gfile=False, spark_parquet=False,
               credentials="name the account in the URI (abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/...) or set "
               "AZURE_STORAGE_ACCOUNT_NAME, and set one of AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN, "
               "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_CLIENT_ID/AZURE_STORAGE_CLIENT_SECRET/"
               "AZURE_STORAGE_TENANT_ID (or give the node a managed identity)", env=_AZURE,
               forward=tuple(n for n in _AZURE if n != "AZURE_FEDERATED_TOKEN_FILE"))

#: Every scheme the pipeline accepts in a data root, by the name before ``://`` (a path without one is
#: :data:`LOCAL`). ``s3a://`` (the name Spark's Hadoop S3A connector registers) is the same store as
#: ``s3://`` so one root string serves Spark and Python alike; likewise ``abfss://`` (TLS) is ``abfs://``.
SCHEMES = {
    "file": LOCAL,
    "s3": _S3,
    "s3a": _S3,
    "gs": Scheme("gs", "gs", "gcsfs", "gcsfs", atomic_rename=False, conditional_write=False, consistent_listing=True,
                 tf_gfile=True, spark_parquet=True,
                 credentials="set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on a node "
                 "with a service account attached",
                 env=("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST", "NO_GCE_CHECK"),
                 forward=("GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST")),
    "hdfs": Scheme("hdfs", "hdfs", "pyarrow", "pyarrow", atomic_rename=True, conditional_write=False,
                   consistent_listing=True, tf_gfile=False, spark_parquet=True,
                   credentials="set JAVA_HOME, HADOOP_HOME (libhdfs.so in $HADOOP_HOME/lib/native, or "
                   "ARROW_LIBHDFS_DIR) and CLASSPATH=$(hadoop classpath --glob); on a Kerberos cluster run kinit "
                   "(KRB5CCNAME), else set HADOOP_USER_NAME",
                   env=("HADOOP_USER_NAME", "KRB5CCNAME", "HADOOP_HOME", "HADOOP_CONF_DIR", "CLASSPATH",
                        "ARROW_LIBHDFS_DIR", "JAVA_HOME"), forward=("HADOOP_USER_NAME",)),
    "abfs": _ABFS,
    "abfss": _ABFS,
}


# Exception classes (by name, so no client library is imported to test them) that mean the client
# could not authenticate, and those that mean the store could not be reached.
_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "ClientAuthenticationError", "CredentialUnavailableError", "GoogleAuthError",
                      "DefaultCredentialsError", "RefreshError"}
_CONNECTION_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                      "ReadTimeoutError", "ClientConnectorError", "ServiceRequestError", "ConnectionError",
                      "TimeoutError", "gaierror"}
_PASS_THROUGH = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


def _remote(path):
    """A URI (s3://, gs://, hdfs://, abfs://...) goes through fsspec; a local path or ``file://`` through
    the OS, without importing any client library (the convert job on a local root needs none)."""
    return "://" in path and not path.startswith("file://")


def _local(path):
    return path[len("file://"):] if path.startswith("file://") else path


def _scheme(path):
    return path.split("://", 1)[0].lower() if "://" in path else ""


def supported_schemes() -> str:
    """The accepted root forms, for messages: ``local paths, file://, s3://, s3a://, ...``."""
    return "local paths, " + ", ".join(f"{s}://" for s in SCHEMES)


def scheme_of(path: str) -> Scheme:
    """The :class:`Scheme` of ``path``: :data:`LOCAL` for a local path or ``file://``, else the entry of
    :data:`SCHEMES` named before ``://`` (any case). Raises StorageError, naming the supported schemes
    with each one's package, for any other scheme."""
    if not _remote(path):
        return LOCAL
    scheme = _scheme(path)
    spec = SCHEMES.get(scheme)
    if spec is None or not spec.remote:
        needs = "; ".join(f"{s}:// needs {v.package}" for s, v in SCHEMES.items() if v.remote and s == v.name)
        raise StorageError(f"data root {path} has the unsupported scheme {scheme}://: use one of "
                           f"{supported_schemes()} ({needs}; s3a:// is s3://, abfss:// is abfs://)")
    return spec


def check_root(root: str) -> str:
    """Return ``root`` unchanged when the pipeline can use it as a data root, else raise StorageError.

    Accepted: a local path, ``file://``, and the schemes of :data:`SCHEMES` whose client package is
    installed. Refused, before any Spark job starts: any other scheme (the message names the supported
    ones, with each one's package and credentials), a URI without a bucket/container/host, and a URI
    carrying a password (it would show in argv, the task log and the Spark UI). Only the form is
    checked: :func:`check_access` reaches the store.
    """
    spec = scheme_of(root)
    if not spec.remote:
        return root
    scheme = _scheme(root)
    authority = root.split("://", 1)[1].split("/", 1)[0]
    if not authority:
        raise StorageError(f"data root {root} names no {'namenode' if scheme == 'hdfs' else 'bucket'}: "
                           f"write it as {scheme}://NAME/path")
    userinfo = authority.rsplit("@", 1)[0] if "@" in authority else ""
    if ":" in userinfo:
        raise StorageError(f"data root {scheme}://...@{authority.rsplit('@', 1)[1]} carries a password: "
                           f"remove it from the URI and {spec.credentials}")
    import importlib.util
    if importlib.util.find_spec(spec.module) is None:
        raise StorageError(f"data root {root} needs the {spec.package} package (pinned in requirements.txt): "
                           f"install it on the driver and every executor")
    return root


#: ``spark.redaction.regex`` for a job that forwards credential variables to its executors. Spark 4.2's
#: default, ``(?i)secret|password|token|access[.]?key``, leaves ``spark.executorEnv.AWS_ACCESS_KEY_ID``,
#: ``...AZURE_STORAGE_ACCOUNT_KEY`` and ``...AZURE_STORAGE_CONNECTION_STRING`` readable in the Spark UI
#: and the event log; this one redacts every secret variable of :data:`SCHEMES` (and the s3a keys).
SPARK_REDACTION_REGEX = r"(?i)secret|password|token|access[._]?key|account[._]?key|connection[._]?string"
#: Variable names whose values are secrets: never in a message.
SECRET_NAMES = re.compile(SPARK_REDACTION_REGEX)


def executor_env(root: str) -> dict:
    """The variables of this process's environment that executors need to reach ``root`` (the set ones
    of its scheme's ``forward``: credentials, endpoint, region), name -> value; ``{}`` for a local root.
    Variables naming files (GOOGLE_APPLICATION_CREDENTIALS, KRB5CCNAME, AWS_CONFIG_FILE...) are not
    forwarded: the driver's paths mean nothing on a node, which sets its own. Set them as
    ``spark.executorEnv.NAME`` on the SparkSession builder, in-process (never as ``--conf`` in argv),
    together with ``spark.redaction.regex`` = :data:`SPARK_REDACTION_REGEX`.
    """
    if not _remote(root):
        return {}
    spec = SCHEMES.get(_scheme(root))
    return {n: os.environ[n] for n in (spec.forward if spec else ()) if n in os.environ}


def _secrets():
    """Values of the secret variables of :data:`SCHEMES` in the environment, kept out of any message."""
    names = {n for s in SCHEMES.values() for n in s.env if SECRET_NAMES.search(n)}
    return [v for n, v in os.environ.items() if n in names and len(v) >= 4]


def _one_line(exc):
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    for secret in _secrets():
        line = line.replace(secret, "***")
    return line[:240] + ("..." if len(line) > 240 else "")


def _failure(exc):
    """'credentials', 'connection' or None (an error this layer leaves as it is)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, PermissionError) or names & _CREDENTIAL_ERRORS:
        return "credentials"
    if getattr(exc, "code", None) in (401, 403) or str(exc).startswith("Forbidden"):  # gcsfs HttpError / 403
        return "credentials"
    if names & _CONNECTION_ERRORS:
        return "connection"
    return None


@contextlib.contextmanager
def _translated(path, setup=False):
    """Turn a credential or connection failure on ``path`` into a one-line StorageError. With
    ``setup``, any failure counts (building a client: a missing account name, libhdfs not loadable)."""
    try:
        yield
    except (StorageError, *_PASS_THROUGH):
        raise
    except Exception as exc:
        kind = "setup" if setup and not isinstance(exc, ImportError) else _failure(exc)
        if kind is None:
            raise
        spec = scheme_of(path)
        what = {"credentials": "access was refused", "connection": "the store could not be reached",
                "setup": "its client could not be set up"}[kind]
        hint = spec.credentials
        if kind == "connection":
            where = ("AWS_ENDPOINT_URL_S3 (an S3-compatible store's URL; unset for AWS)" if spec is _S3
                     else "the store's address")
            hint = f"check {where} and the network; {hint}"
        raise StorageError(f"{path}: {what} ({type(exc).__name__}: {_one_line(exc)}); {hint}") from None


_CLIENTS = {}


def _client(path):
    """The fsspec file system for ``path`` (one per process, scheme, URI options and credential
    environment). Raises StorageError for an unsupported scheme or a client that cannot be built."""
    spec = scheme_of(check_root(path))
    import fsspec
    cls = fsspec.get_filesystem_class(spec.protocol)
    options = cls._get_kwargs_from_urls(path)  # hdfs: namenode host/port/user; abfs: the account
    key = (os.getpid(), spec.protocol, tuple(sorted(options.items())),
           hash(tuple(os.environ.get(n) for n in spec.env)))
    fsys = _CLIENTS.get(key)
    if fsys is None:
        with _translated(path, setup=True):
            # no listings cache: executors write files the driver lists later
            fsys = cls(skip_instance_cache=True, use_listings_cache=False, **options)
        _CLIENTS[key] = fsys
    return fsys


def _to_uri(uri_dir, fsys, names):
    """Map fsspec's scheme-less results under ``uri_dir`` back to URIs of the caller's form."""
    stripped = fsys._strip_protocol(uri_dir).rstrip("/")
    head = uri_dir.rstrip("/")
    return [head + n[len(stripped):] if n.startswith(stripped) else n for n in names]


def _split(path):
    if "://" in path:
        return posixpath.split(path.rstrip("/"))
    return os.path.split(path.rstrip("/"))


def parent(path: str) -> str:
    """The directory holding ``path`` (URIs split on '/')."""
    return _split(path)[0]


def basename(path: str) -> str:
    """The last segment of ``path``, trailing '/' ignored."""
    return _split(path)[1]


def sibling(path: str, name: str) -> str:
    """``name`` in the directory holding ``path``."""
    head = parent(path)
    return f"{head}/{name}" if "://" in path else os.path.join(head, name)


def _join(a, b):
    return f"{a.rstrip('/')}/{b}" if "://" in a else os.path.join(a, b)


def exists(path: str) -> bool:
    """Whether a file or directory (on object stores: any object under the prefix) is at ``path``."""
    if not _remote(path):
        return os.path.exists(_local(path))
    fsys = _client(path)
    with _translated(path):
        return fsys.exists(path)


def makedirs(path: str) -> None:
    """Create a directory and its parents; a no-op on object stores (no directories, and a missing
    bucket must not be created by accident)."""
    if not _remote(path):
        os.makedirs(_local(path), exist_ok=True)
    elif not scheme_of(check_root(path)).object_store:
        fsys = _client(path)
        with _translated(path):
            fsys.makedirs(path, exist_ok=True)


def rmtree(path: str) -> None:
    """Remove a file or a directory tree (every object under the prefix); nothing there is fine."""
    if not _remote(path):
        if os.path.islink(_local(path)):  # a published output's pointer: the link goes, not its attempt
            os.remove(_local(path))
        elif os.path.isdir(_local(path)):
            shutil.rmtree(_local(path))
        elif os.path.lexists(_local(path)):
            os.remove(_local(path))
        return
    fsys = _client(path)
    with _translated(path):
        try:
            fsys.rm(path, recursive=True)
        except FileNotFoundError:
            pass


def isdir(path: str) -> bool:
    """Whether ``path`` is a directory (on object stores: a prefix with objects under it)."""
    if not _remote(path):
        return os.path.isdir(_local(path))
    fsys = _client(path)
    with _translated(path):
        return fsys.isdir(path)


def listdir(path: str) -> list:
    """Sorted names (not paths) in the directory ``path``; ``[]`` when it is missing or a file."""
    if not _remote(path):
        return sorted(os.listdir(_local(path))) if os.path.isdir(_local(path)) else []
    fsys = _client(path)
    with _translated(path):
        try:
            entries = fsys.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
    own = fsys._strip_protocol(path).rstrip("/")
    if len(entries) == 1 and entries[0]["type"] == "file" and entries[0]["name"].rstrip("/") == own \
            and not _is_marker(entries[0]):
        return []
    return sorted(n for n in (posixpath.basename(e["name"].rstrip("/")) for e in entries
                              if e["name"].rstrip("/") != own and not _is_marker(e))
                  if not _emr_marker(_join(path, n)))


#: EMR's folder marker: an empty object ``<folder>_$folder$`` beside the folder (EMRFS, old Hadoop s3n).
EMR_MARKER_SUFFIX = "_$folder$"
_MARKERS_LOGGED = set()


def _is_marker(entry):
    """A folder marker, not a file: a zero-byte key ending in '/' (the S3 console's "Create folder",
    S3A's directory markers), as s3fs, Hadoop and Trino treat it."""
    return entry.get("type") == "file" and entry.get("size", 0) == 0 and str(entry.get("Key", entry["name"])).endswith("/")


def _emr_marker(path):
    """Whether ``path`` is an EMR ``*_$folder$`` marker; each one skipped is said once on stderr."""
    if not path.endswith(EMR_MARKER_SUFFIX):
        return False
    if path not in _MARKERS_LOGGED:
        _MARKERS_LOGGED.add(path)
        import sys
        print(f"INFO [storage] skipping {path}: an EMR folder marker (an empty object named "
              f"'<folder>{EMR_MARKER_SUFFIX}'), not data", file=sys.stderr, flush=True)
    return True


def _visible(pattern, found):
    """Like the local glob: a wildcard does not match a name that starts with '.'."""
    want = pattern.rstrip("/").split("/")
    have = found.rstrip("/").split("/")
    return len(want) != len(have) or not any(h.startswith(".") and not w.startswith(".")
                                             for w, h in zip(want, have))


def glob(pattern: str) -> list:
    """Sorted paths matching ``pattern`` (``*``, ``?``, ``[...]``), in the pattern's form (URI or local)."""
    if not _remote(pattern):
        return sorted(_glob.glob(_local(pattern)))
    fsys = _client(pattern)
    cut = min([i for i in (pattern.find(c) for c in "*?[") if i >= 0], default=len(pattern))
    fixed = pattern[:pattern.rfind("/", 0, cut)] if cut < len(pattern) else parent(pattern)
    with _translated(pattern):
        found = _to_uri(fixed, fsys, fsys.glob(pattern))
    return sorted(p for p in found if _visible(pattern, p) and not _emr_marker(p))


def walk(path: str) -> Iterator:
    """``(dirpath, dirnames, filenames)`` for every directory under ``path``, like ``os.walk``; local
    paths come back local (``file://`` removed), URIs as URIs. Nothing for a missing path."""
    if not _remote(path):
        yield from os.walk(_local(path))
        return
    fsys = _client(path)
    with _translated(path):
        found = list(fsys.walk(path))
    for dirpath, dirs, files in found:
        uri = _to_uri(path, fsys, [dirpath])[0]
        # '' is a folder marker (a zero-byte key ending in '/') that fsspec lists as a nameless file
        yield uri, sorted(dirs), sorted(f for f in files if f and not _emr_marker(_join(uri, f)))


def size(path: str) -> int:
    """Size of the file at ``path`` in bytes."""
    if not _remote(path):
        return os.path.getsize(_local(path))
    fsys = _client(path)
    with _translated(path):
        return int(fsys.size(path))


def mtime(path: str) -> float:
    """Last modification of the file at ``path``, seconds since the epoch (object stores: the
    object's LastModified, whole seconds on S3)."""
    if not _remote(path):
        return os.path.getmtime(_local(path))
    fsys = _client(path)
    with _translated(path):
        return fsys.modified(path).timestamp()


def rename(src: str, dst: str) -> None:
    """Rename a file or directory; a file at ``dst`` is replaced. Atomic on local paths and for an HDFS
    directory; on object stores a copy then a delete (not atomic: :class:`Staging` does not rely on it).
    Both paths must be on the same file system (ValueError otherwise)."""
    if not _remote(src) and not _remote(dst):
        os.replace(_local(src), _local(dst))
        return
    if _scheme(src) != _scheme(dst) or _client(src) is not _client(dst):
        raise ValueError(f"cannot rename {src} to {dst}: not on the same file system")
    fsys = _client(src)
    if scheme_of(src).object_store:
        if isdir(src):
            copytree(src, dst)
        else:
            with _translated(src):
                fsys.copy(src, dst)
        rmtree(src)
        return
    with _translated(src):
        if fsys.isfile(dst):
            fsys.rm(dst)  # HDFS renames only onto a free name
        fsys.mv(src, dst)


def read_bytes(path: str) -> bytes:
    """The whole file at ``path``."""
    if not _remote(path):
        with open(_local(path), "rb") as f:
            return f.read()
    fsys = _client(path)
    with _translated(path):
        return fsys.cat_file(path)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` as the file at ``path`` (replacing it; one PUT on object stores)."""
    if not _remote(path):
        with open(_local(path), "wb") as f:
            f.write(data)
        return
    fsys = _client(path)
    with _translated(path):
        fsys.pipe_file(path, data)


def open_read(path: str) -> IO[bytes]:
    """A binary file object for reading, streamed on remote stores. Credential and connection
    failures are StorageError when opening; later ones come from the client as they are."""
    if not _remote(path):
        return open(_local(path), "rb")
    fsys = _client(path)
    with _translated(path):
        return fsys.open(path, "rb")


def open_write(path: str) -> IO[bytes]:
    """A binary file object for writing; on object stores the object appears when it is closed
    (multipart upload for large ones)."""
    if not _remote(path):
        return open(_local(path), "wb")
    fsys = _client(path)
    with _translated(path):
        return fsys.open(path, "wb")


def read_json(path: str) -> Any:
    """The JSON document (UTF-8) at ``path``."""
    return json.loads(read_bytes(path).decode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (UTF-8, final newline)."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON so a reader sees the old file or the new one, never a partial one: a temporary file
    renamed over it locally and on HDFS; a single PUT (atomic by itself) on object stores."""
    if scheme_of(check_root(path)).object_store:
        write_json(path, obj)
        return
    tmp = sibling(path, f".{basename(path)}.tmp-{uuid.uuid4().hex}")
    write_json(tmp, obj)
    rename(tmp, path)


def copytree(src: str, dst: str) -> None:
    """Copy a directory tree into ``dst`` (files there are replaced). Server-side copies within one
    store; streamed between different ones (a local model into a remote root, or back)."""
    if not _remote(src) and not _remote(dst):
        shutil.copytree(_local(src), _local(dst), dirs_exist_ok=True)
        return
    same = _remote(src) and _remote(dst) and _client(src) is _client(dst)
    pairs = []
    for dirpath, _dirs, files in walk(src):
        rel = dirpath[len(_local(src).rstrip("/")):].strip("/")
        target = _join(dst, rel) if rel else dst
        makedirs(target)
        pairs += [(_join(dirpath, name), _join(target, name)) for name in files]
    if same and pairs:
        with _translated(src):
            _client(src).copy([s for s, _ in pairs], [d for _, d in pairs])  # concurrent server-side copies
        return
    for s, d in pairs:
        with open_read(s) as fin, open_write(d) as fout:
            shutil.copyfileobj(fin, fout, 8 << 20)


def _container(root):
    """``scheme://bucket`` of an object-store URI (``abfs://container@account...`` for Azure)."""
    scheme, rest = root.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def check_access(root: str, must_exist: bool = False) -> None:
    """Reach ``root`` with the credentials of this process: list it, and when it is empty check that its
    bucket/container exists. Local roots are not reached. Call at the start of a job (driver side), or
    of a script that reads a root (``must_exist``).

    ``must_exist``: the root must already be there (a tool that only reads it): a local directory, or
    on a store a prefix with something stored under it (an object store has no empty directories, so
    an empty prefix counts as missing). A job (False) may start a new root.

    Raises StorageError (one line: the root, what failed, what to set or do) for an unsupported scheme,
    a client that cannot be set up, refused or missing credentials, an unreachable store, a bucket that
    does not exist, or (``must_exist``) a root that does not exist.
    """
    check_root(root)
    if not _remote(root):
        if must_exist and not os.path.isdir(_local(root)):
            is_file = " (it is a file)" if os.path.exists(_local(root)) else ""
            raise StorageError(f"data root {root} does not exist{is_file}: fix the data root's path") from None
        return
    with _quiet_clients():
        _reach(root, must_exist)


@contextlib.contextmanager
def _quiet_clients():
    """Silence the client libraries' own error logs (gcsfs logs a traceback per failed request): the
    StorageError raised says what failed, in one line."""
    import logging
    loggers = [logging.getLogger(n) for n in ("gcsfs", "adlfs", "azure", "s3fs", "fsspec")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _reach(root, must_exist=False):
    fsys = _client(root)
    with _translated(root):
        try:
            fsys.ls(root)
            return
        except (FileNotFoundError, NotADirectoryError):
            pass  # a new root: nothing written yet
        top = _container(root) if scheme_of(root).object_store else None
        # refused credentials failed the listing above already
        container_exists = top is None or fsys.exists(top)
    if not container_exists:
        raise StorageError(f"{root}: the bucket {top} does not exist; create it or fix the data root") from None
    if must_exist:
        raise StorageError(f"data root {root} does not exist (nothing is stored under it): fix the data root's "
                           "path") from None



# --- conditional writes: the one primitive every commit and pointer uses -----------------------------

#: Set to ``1`` to use a root whose store this layer cannot write conditionally (``gs``, ``hdfs``,
#: ``abfs``: ``Scheme.conditional_write`` False) on the promise that one task at a time writes to it:
#: pointers are then replaced by plain writes, and two concurrent writers can lose an update.
SINGLE_WRITER_ENV = "TFOS_SINGLE_WRITER"


class PreconditionFailed(Exception):
    """A conditional write (:func:`write_if`) found ``path`` not as the writer last read it: it exists
    when ``token`` was None (create-only), or it changed or vanished since ``token`` was read."""

    def __init__(self, path: str, token: str | None):
        self.path, self.token = path, token
        want = "absent" if token is None else f"unchanged since it was read (token {token})"
        super().__init__(f"{path} was written by someone else: this write required it {want}")


def single_writer() -> bool:
    """Whether the user chose the single-writer mode (:data:`SINGLE_WRITER_ENV` = ``1``)."""
    return os.environ.get(SINGLE_WRITER_ENV, "") == "1"


def check_commits(root: str) -> None:
    """Refuse, before anything is written, a root whose store this layer cannot write conditionally
    (:attr:`Scheme.conditional_write`), unless the single-writer mode is on. Every output and the
    serving pointer are published by a conditional write (:class:`Staging`, :func:`write_if`); without
    one two concurrent attempts or promotions could silently overwrite each other. Raises StorageError."""
    spec = scheme_of(check_root(root))
    if spec.conditional_write or single_writer():
        return
    raise StorageError(
        f"data root {root}: the pipeline publishes every output and the serving pointer by a conditional "
        f"write, which it cannot make on {spec.name}:// through {spec.package}; use a local or s3:// root, or, "
        f"if only one task at a time ever writes to this root (one DAG run, no retries overlapping a live "
        f"attempt, no manual rollback during a run), set {SINGLE_WRITER_ENV}=1 (README: Storage guarantees)")


def _sha(data):
    import hashlib
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _flock(lock_path):
    """An exclusive ``flock`` on ``lock_path`` (created if missing), released by the kernel if we die."""
    import fcntl
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _lock_of(local_path):
    head, name = os.path.split(local_path)
    return os.path.join(head, f".{name}.lock")


def read_versioned(path: str) -> tuple[bytes | None, str | None]:
    """``(content, token)`` of the small object at ``path``, ``(None, None)`` when there is none. Pass
    ``token`` to :func:`write_if` to replace the object only if nobody wrote it meanwhile. The token is
    the object's ETag on S3 (read before the content, so a write racing the read makes the conditional
    write fail rather than succeed on stale content), the sha256 of the content elsewhere."""
    if not _remote(path):
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            return None, None
        return data, _sha(data)
    spec = scheme_of(check_root(path))
    fsys = _client(path)
    with _translated(path):
        try:
            if spec is _S3:  # HEAD of the key alone (fsspec's info would also list a missing key's prefix)
                bucket, key, _ = fsys.split_path(path)
                try:
                    etag = fsys.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
                except OSError as exc:
                    if isinstance(exc, FileNotFoundError) or _precondition(exc):
                        return None, None
                    raise
                return fsys.cat_file(path), etag
            data = fsys.cat_file(path)
        except FileNotFoundError:
            return None, None
    return data, _sha(data)


def _precondition(exc):
    """Whether a client error means a failed S3 condition (412 PreconditionFailed, 409
    ConditionalRequestConflict of two racing conditional writes, or If-Match on a missing key)."""
    seen = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404")
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, FileExistsError)


def write_if(path: str, data: bytes, token: str | None) -> None:
    """Write ``data`` as the object at ``path`` only if it is as the caller last saw it: absent when
    ``token`` is None (create-only), else unchanged since :func:`read_versioned` returned ``token``.
    Readers see the old object or the new one, never a part of either.

    Local: create-only is ``link(2)`` of a complete temporary file (fails if the name exists); a
    replace compares the content's digest and renames a temporary file over it while holding an
    ``flock`` on ``.<name>.lock`` beside it (released by the kernel if the writer is killed). S3:
    one ``PutObject`` with ``If-None-Match: *`` or ``If-Match: <ETag>``. In the single-writer mode
    (:data:`SINGLE_WRITER_ENV`) on a store without conditional writes: a plain write.

    Raises PreconditionFailed when the condition does not hold (nothing is written), StorageError
    when the store cannot be reached or (without the single-writer mode) cannot write conditionally.
    """
    if not _remote(path):
        target = _local(path)
        head = os.path.dirname(target) or "."
        os.makedirs(head, exist_ok=True)
        tmp = os.path.join(head, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            if token is None:
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    raise PreconditionFailed(path, token) from None
                return
            with _flock(_lock_of(target)):
                try:
                    now = read_bytes(target)
                except FileNotFoundError:
                    raise PreconditionFailed(path, token) from None
                if _sha(now) != token:
                    raise PreconditionFailed(path, token)
                os.replace(tmp, target)
        finally:
            if os.path.lexists(tmp):
                os.remove(tmp)
        return
    spec = scheme_of(check_root(path))
    fsys = _client(path)
    if spec is not _S3:
        check_commits(path)  # the single-writer mode: the user promised there is no other writer
        with _translated(path):
            fsys.pipe_file(path, data)
        return
    condition = {"mode": "create"} if token is None else {"IfMatch": token}
    try:
        with _translated(path):
            fsys.pipe_file(path, data, **condition)
    except OSError as exc:
        if _precondition(exc):
            raise PreconditionFailed(path, token) from None
        raise


# --- the commit protocol: immutable attempts, published by a conditional write of a pointer ----------

#: The commit pointer of an output on a store without rename: ``{output}/_COMMIT.json`` names the
#: attempt directory that holds the output (``attempt``, ``path``, ``committed_at``).
COMMIT = "_COMMIT.json"
#: How long (seconds) after it started an attempt that no pointer names may be removed
#: (:func:`collect_attempts`); longer than any attempt runs, so a live one is never removed, and
#: longer than any read, so a reader that resolved an older pointer finishes first. Override with the
#: environment variable of the same name.
ATTEMPT_GRACE_ENV = "TFOS_ATTEMPT_GRACE_S"
ATTEMPT_GRACE_S = 6 * 3600.0
#: An attempt's name: its UTC start, then 12 random hex digits.
_ATTEMPT_RE = re.compile(r"^(\d{8}T\d{6})Z-[0-9a-f]{12}$")


class CommitConflict(Exception):
    """Another attempt published the same output after this attempt started: this one's files are not
    published (the other attempt's complete output stays), and are removed after the grace period."""


def attempts_dir(final: str) -> str:
    """``{parent}/.{name}.attempts``: the attempt directories of the output ``final``, one per attempt."""
    return sibling(final.rstrip("/"), f".{basename(final)}.attempts")


def commit_pointer(final: str) -> str:
    """Where the output ``final`` is published: ``final`` itself on a local root (a symbolic link,
    replaced by an atomic rename), ``{final}/_COMMIT.json`` on any other store."""
    return final.rstrip("/") if not _remote(final) else _join(final, COMMIT)


def _read_pointer(final):
    """``(attempt name or None, token)`` of the output's pointer. Local: the link's target (a legacy
    output directory gives ``'(legacy)'``); elsewhere the content and token of ``_COMMIT.json``."""
    if not _remote(final):
        target = _local(final).rstrip("/")
        if os.path.islink(target):
            link = os.readlink(target)
            return basename(link), link
        return ("(legacy)", "(legacy)") if os.path.isdir(target) else (None, None)
    data, token = read_versioned(commit_pointer(final))
    if data is None:
        return None, None
    return json.loads(data.decode("utf-8"))["attempt"], token


def resolve(final: str) -> str:
    """The directory to read the output ``final`` from: the attempt its pointer names; ``final`` itself
    for an output committed before attempts existed (``_SUCCESS`` directly in it) or never committed
    (then its ``_SUCCESS`` is missing and :func:`is_committed` is False). Resolve once per read and read
    every file of the output under the result: a later commit never changes or removes it within the
    grace period (:data:`ATTEMPT_GRACE_S`)."""
    final = final.rstrip("/")
    if not _remote(final):
        target = _local(final)
        if os.path.islink(target):
            return os.path.join(os.path.dirname(target), os.readlink(target))
        return final
    data, _ = read_versioned(commit_pointer(final))
    if data is None:
        return final
    return _join(attempts_dir(final), json.loads(data.decode("utf-8"))["attempt"])


def is_committed(path: str) -> bool:
    """Whether the output at ``path`` is published: its pointer names an attempt carrying ``_SUCCESS``
    (or, for an output of the layout before attempts, ``_SUCCESS`` is in it)."""
    return exists(_join(resolve(path), SUCCESS))


def _attempt_name():
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S") + "Z-" + uuid.uuid4().hex[:12]


def _attempt_age(name):
    import datetime
    m = _ATTEMPT_RE.match(name)
    if not m:
        return None
    started = datetime.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()


def attempt_grace() -> float:
    """The grace period in seconds (:data:`ATTEMPT_GRACE_ENV`, default :data:`ATTEMPT_GRACE_S`)."""
    value = os.environ.get(ATTEMPT_GRACE_ENV, "")
    try:
        return float(value) if value else ATTEMPT_GRACE_S
    except ValueError:
        raise StorageError(f"{ATTEMPT_GRACE_ENV}={value!r} is not a number of seconds: set it to e.g. 21600") from None


def collect_attempts(final: str, grace: float | None = None) -> list[str]:
    """Remove the attempt directories of ``final`` that its pointer does not name and that started more
    than ``grace`` seconds ago (default :func:`attempt_grace`); returns the names removed. The pointer
    is read again before each removal, so an attempt published meanwhile is kept."""
    grace = attempt_grace() if grace is None else grace
    base = attempts_dir(final)
    removed = []
    for name in listdir(base):
        age = _attempt_age(name)
        if age is None or age <= grace:
            continue
        if _read_pointer(final)[0] == name:
            continue
        rmtree(_join(base, name))
        removed.append(name)
    return removed


def delete_output(final: str) -> None:
    """Remove the output ``final`` outright: its pointer (or, for the layout before attempts, its files)
    first, so readers stop taking it, then every attempt of it. For tools that discard an output (the
    benchmarks); a job never deletes one, it publishes a new attempt."""
    rmtree(final)
    rmtree(attempts_dir(final))


def _publish(final, attempt, seen):
    """Point ``final`` at ``attempt`` if its pointer is still ``seen`` (the token read when the attempt
    started). Raises PreconditionFailed otherwise."""
    if not _remote(final):
        target = _local(final).rstrip("/")
        head = os.path.dirname(target)
        link = os.path.join(os.path.basename(_local(attempts_dir(final))), attempt)
        with _flock(os.path.join(_local(attempts_dir(final)), ".lock")):
            now = _read_pointer(final)[1]
            if now != seen:
                raise PreconditionFailed(final, seen)
            tmp = os.path.join(head, f".{os.path.basename(target)}.link-{uuid.uuid4().hex[:12]}")
            os.symlink(link, tmp)
            try:
                if now == "(legacy)":  # an output written before attempts: kept as an attempt of its own
                    os.rename(target, os.path.join(_local(attempts_dir(final)), _attempt_name()))
                os.replace(tmp, target)
            finally:
                if os.path.lexists(tmp):
                    os.remove(tmp)
        return
    import datetime
    body = {"attempt": attempt, "path": _join(attempts_dir(final), attempt),
            "committed_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    write_if(commit_pointer(final), (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8"), seen)


class Staging:
    """One attempt at the output ``final``: an immutable attempt directory of its own, published on
    commit by a conditional write of the output's pointer.

    * ``__enter__`` reads the pointer as it is (the state this attempt replaces) and creates
      ``{parent}/.{name}.attempts/{UTC start}Z-{random}/`` (:attr:`path`); the job writes there only. No
      other attempt is touched: a concurrent one (a retry beside a zombie, a backfill beside a cleared
      task) keeps its files.
    * :meth:`commit` writes ``_manifest.json``, then ``_SUCCESS``, into the attempt, then moves the
      pointer to it only if the pointer is still as read at the start (:func:`write_if`; a local root:
      a symbolic link ``final`` replaced by ``rename(2)`` under an ``flock``). If another attempt
      published meanwhile, CommitConflict is raised and that output stays.
    * Then attempts that no pointer names and that started more than the grace period ago are removed
      (:func:`collect_attempts`).

    A kill at any step leaves the pointer naming the previous complete output or the new one: readers
    that resolve it (:func:`resolve`) never see none or a mix. An output committed before attempts
    existed (files directly in ``final``) is read as it is until the first commit replaces it.

    ``once``: an output that is published once and never replaced (a promoted model). Its commit is
    create-only: on a local root the attempt, a hidden sibling ``.{name}.attempt-{id}``, is renamed to
    ``final`` (``rename(2)`` onto a name that exists fails), elsewhere ``_COMMIT.json`` is written with
    ``If-None-Match: *``; CommitConflict when another attempt published it first.
    """

    def __init__(self, final: str, once: bool = False):
        self.final = final.rstrip("/")
        self.once = once
        self.attempt = _attempt_name()
        if once and not _remote(self.final):
            self.path = sibling(self.final, f".{basename(self.final)}.attempt-{self.attempt}")
        else:
            self.path = _join(attempts_dir(self.final), self.attempt)
        self._seen = None
        self._committed = False

    def __enter__(self):
        check_commits(self.final)
        makedirs(parent(self.final))
        if not self.once:
            makedirs(attempts_dir(self.final))
            self._seen = _read_pointer(self.final)[1]
        makedirs(self.path)
        return self

    def file(self, *parts: str) -> str:
        """Path of a file inside the attempt directory."""
        return _join(self.path, "/".join(parts)) if "://" in self.path else os.path.join(self.path, *parts)

    def commit(self, manifest: dict) -> None:
        """Write the manifest and ``_SUCCESS`` into the attempt, publish it (see the class), then remove
        superseded attempts past the grace period. Raises CommitConflict (nothing of this attempt is
        published) when another attempt published the output after this one started."""
        write_json(self.file(MANIFEST), dict(manifest, attempt=self.attempt))
        write_bytes(self.file(SUCCESS), b"")
        try:
            if self.once and not _remote(self.final):
                try:
                    os.rename(_local(self.path), _local(self.final))
                except OSError as exc:
                    if os.path.exists(_local(self.final)):
                        raise PreconditionFailed(self.final, None) from None
                    raise exc
                self._committed = True
                return
            _publish(self.final, self.attempt, self._seen)
        except PreconditionFailed:
            now = _read_pointer(self.final)[0]
            raise CommitConflict(
                f"{self.final}: another attempt ({now}) published this output after this attempt "
                f"({self.attempt}) started; that output stays and this attempt's files in {self.path} were "
                "not published (they are removed after the grace period). If this attempt's output should "
                "replace it, run the task again") from None
        self._committed = True
        collect_attempts(self.final)

    def __exit__(self, exc_type, exc, tb):
        if not self._committed:
            rmtree(self.path)  # our own attempt, never published: no pointer names it
            if not _remote(self.path) and not self.once:
                with contextlib.suppress(OSError):  # only when empty: another attempt may be writing
                    os.rmdir(_local(attempts_dir(self.final)))
        return False
