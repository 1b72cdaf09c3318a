"""The file-system layer on a real S3 API: a ``moto_server`` process on loopback, with IAM authentication
on, reached through s3fs exactly as a cluster reaches S3 (credentials and endpoint from the environment).
"""
import hashlib
import os
import time
import uuid

import pytest

from conftest import MOTO_BUCKET as BUCKET
from conftest import free_port as _free_port
from tfospipe import fs

def _as(monkeypatch, key_id, secret, endpoint):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)


@pytest.fixture(autouse=True)
def s3_env(monkeypatch, moto, tmp_path):
    """The writer's credentials and the server's endpoint, in the environment only (as on a node)."""
    endpoint, keys = moto
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    _as(monkeypatch, *keys["writer"], endpoint)
    return endpoint, keys


@pytest.fixture
def root():
    """A fresh prefix of the bucket for one test."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:10]}"


def test_bytes_json_sizes_ranges_and_listing(root):
    fs.write_bytes(f"{root}/a/x.bin", b"0123456789")
    fs.write_json(f"{root}/a/m.json", {"n": 1, "b": [1, 2]})
    assert fs.read_bytes(f"{root}/a/x.bin") == b"0123456789"
    assert fs.read_json(f"{root}/a/m.json") == {"n": 1, "b": [1, 2]}
    assert fs.read_bytes(f"{root}/a/m.json").endswith(b"}\n")          # same bytes as the local writer
    assert fs.size(f"{root}/a/x.bin") == 10
    with fs.open_read(f"{root}/a/x.bin") as f:                          # ranged reads, as inputs.range_lines does
        f.seek(2)
        assert f.read(3) == b"234"
        f.seek(8)
        assert f.read(12) == b"89"                                      # fewer at the end, like a local file
    assert abs(fs.mtime(f"{root}/a/x.bin") - time.time()) < 120
    assert fs.listdir(root) == ["a"]
    assert fs.listdir(f"{root}/a") == ["m.json", "x.bin"]
    assert fs.listdir(f"{root}/a/x.bin") == [] and fs.listdir(f"{root}/missing") == []
    assert fs.exists(f"{root}/a") and fs.exists(f"{root}/a/x.bin") and not fs.exists(f"{root}/b")
    assert fs.isdir(f"{root}/a") and not fs.isdir(f"{root}/a/x.bin") and not fs.isdir(f"{root}/b")
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(f"{root}/a/none")


def test_objects_written_by_another_client_are_seen_at_once(root, s3_env):
    """Executors write worker markers and shards the driver lists afterwards: no stale listing."""
    import boto3
    endpoint, keys = s3_env
    other = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=keys["writer"][0],
                         aws_secret_access_key=keys["writer"][1])
    prefix = root[len(f"s3://{BUCKET}/"):]
    fs.write_bytes(f"{root}/workers/worker-0.json", b"{}")
    assert fs.listdir(f"{root}/workers") == ["worker-0.json"]
    assert fs.glob(f"{root}/workers/*.json") == [f"{root}/workers/worker-0.json"]
    other.put_object(Bucket=BUCKET, Key=f"{prefix}/workers/worker-1.json", Body=b"{}")
    assert fs.listdir(f"{root}/workers") == ["worker-0.json", "worker-1.json"]
    assert len(fs.glob(f"{root}/workers/*.json")) == 2 and fs.exists(f"{root}/workers/worker-1.json")
    other.delete_object(Bucket=BUCKET, Key=f"{prefix}/workers/worker-0.json")
    assert fs.listdir(f"{root}/workers") == ["worker-1.json"]


def test_glob_matches_the_local_glob_and_keeps_the_uri_form(root, tmp_path):
    names = ["s1/part-00000.tfrecord", "s1/part-00001.tfrecord", "s1/.part-00002.tfrecord", "s1/other.txt",
             "s2/part-00000.tfrecord", ".hidden/part-00000.tfrecord"]
    for n in names:
        fs.write_bytes(f"{root}/{n}", b"r")
        os.makedirs(os.path.dirname(tmp_path / n), exist_ok=True)
        (tmp_path / n).write_bytes(b"r")
    for pattern in ("s1/part-*.tfrecord", "*/part-*.tfrecord", "s?/*", "s1/part-0000[1]*"):
        local = [os.path.relpath(p, tmp_path) for p in fs.glob(str(tmp_path / pattern))]
        remote = fs.glob(f"{root}/{pattern}")
        assert remote == [f"{root}/{p}" for p in local] and local, pattern
    s3a = "s3a://" + root[len("s3://"):]
    assert fs.glob(f"{s3a}/s2/*") == [f"{s3a}/s2/part-00000.tfrecord"]


def test_rmtree_removes_one_prefix_whole_and_nothing_beside_it(root):
    for n in ("a/x", "a/sub/y", "ab/z", "a.staging/w"):
        fs.write_bytes(f"{root}/{n}", b"1")
    fs.rmtree(f"{root}/a")
    assert fs.listdir(root) == ["a.staging", "ab"]
    fs.rmtree(f"{root}/ab/z")                                            # a single object
    fs.rmtree(f"{root}/never-written")                                   # nothing there is fine
    assert fs.listdir(root) == ["a.staging"]


def test_makedirs_writes_nothing_and_creates_no_bucket(root):
    fs.makedirs(f"{root}/d/e")
    assert not fs.exists(root) and fs.listdir(root) == []
    elsewhere = f"s3://tfos-not-a-bucket-{uuid.uuid4().hex[:6]}/x"
    fs.makedirs(elsewhere)
    with pytest.raises(fs.StorageError, match="does not exist"):
        fs.check_access(elsewhere)


def _tree(base):
    return {rel: fs.read_bytes(f"{d}/{n}" if "://" in d else os.path.join(d, n))
            for d, _dirs, files in fs.walk(base) for n in files
            for rel in [((d[len(base):].strip("/") + "/") if d != base else "") + n]}


def test_copytree_within_the_store_and_across_stores(root, tmp_path):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.index").write_bytes(b"index")
    fs.copytree(str(model), f"{root}/m1")                                # local -> S3
    fs.copytree(f"{root}/m1", f"{root}/m2")                              # S3 -> S3 (server-side)
    fs.copytree(f"{root}/m2", str(tmp_path / "back"))                    # S3 -> local
    want = {"saved_model.pb": b"graph", "variables/variables.index": b"index"}
    assert _tree(f"{root}/m1") == _tree(f"{root}/m2") == _tree(str(tmp_path / "back")) == want
    assert list(fs.walk(f"{root}/m1"))[0] == (f"{root}/m1", ["variables"], ["saved_model.pb"])


def test_streaming_read_and_write(root):
    path = f"{root}/big.bin"
    data = os.urandom(3 << 20)
    with fs.open_write(path) as f:
        for i in range(0, len(data), 1 << 20):
            f.write(data[i:i + (1 << 20)])
        assert not fs.exists(path)                                       # the object appears on close
    assert fs.size(path) == len(data)
    h = hashlib.sha256()
    with fs.open_read(path) as f:
        for chunk in iter(lambda: f.read(1 << 19), b""):
            h.update(chunk)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_rename_replaces_a_file_and_moves_a_tree(root):
    fs.write_bytes(f"{root}/a.tmp", b"new")
    fs.write_bytes(f"{root}/a", b"old")
    fs.rename(f"{root}/a.tmp", f"{root}/a")
    assert fs.read_bytes(f"{root}/a") == b"new" and not fs.exists(f"{root}/a.tmp")
    fs.write_bytes(f"{root}/d/x", b"1")
    fs.write_bytes(f"{root}/d/s/y", b"2")
    fs.rename(f"{root}/d", f"{root}/e")
    assert fs.listdir(root) == ["a", "e"] and fs.read_bytes(f"{root}/e/s/y") == b"2"


def test_write_json_atomic_replaces_with_one_object(root):
    fs.write_json_atomic(f"{root}/serving/CURRENT.json", {"v": 1})
    fs.write_json_atomic(f"{root}/serving/CURRENT.json", {"v": 2})
    assert fs.read_json(f"{root}/serving/CURRENT.json") == {"v": 2}
    assert fs.listdir(f"{root}/serving") == ["CURRENT.json"]             # no temporary object left


@pytest.fixture(params=["local", "s3"])
def any_root(request, tmp_path):
    """The commit tests run on a local root (a symbolic link renamed over the output) and on the S3 root
    (a conditional write of ``_COMMIT.json``)."""
    if request.param == "local":
        return str(tmp_path / "local-root")
    return request.getfixturevalue("root")


def _visible(names):
    return [n for n in names if not n.startswith(".")]


def test_staging_commit_publishes_whole_and_replaces_older_output(any_root):
    root = any_root
    final = f"{root}/out/v1"
    with fs.Staging(final) as st:
        fs.write_bytes(st.file("a.txt"), b"first")
        fs.makedirs(st.file("sub"))                                      # a no-op on the object store
        fs.write_bytes(st.file("sub", "b.txt"), b"deep")
        assert not fs.exists(final) and not fs.is_committed(final)
        st.commit({"n": 1})
    first = fs.resolve(final)
    assert first == st.path and fs.listdir(first) == ["_SUCCESS", "_manifest.json", "a.txt", "sub"]
    assert fs.read_bytes(f"{first}/sub/b.txt") == b"deep" and fs.is_committed(final)
    with fs.Staging(final) as st:
        fs.write_bytes(st.file("c.txt"), b"second")
        st.commit({"n": 2})
    second = fs.resolve(final)
    assert fs.listdir(second) == ["_SUCCESS", "_manifest.json", "c.txt"]
    assert fs.read_json(f"{second}/_manifest.json") == {"n": 2, "attempt": st.attempt}
    assert _visible(fs.listdir(f"{root}/out")) == ["v1"]
    # the superseded attempt stays readable for the grace period (a reader that resolved it finishes)
    assert fs.read_bytes(f"{first}/a.txt") == b"first"
    assert fs.collect_attempts(final) == [] and fs.exists(f"{first}/a.txt")


def test_failed_job_leaves_previous_output_intact_and_nothing_partial(any_root):
    root = any_root
    final = f"{root}/v1"
    with fs.Staging(final) as st:
        fs.write_bytes(st.file("good.txt"), b"good")
        st.commit({"n": 1})
    with pytest.raises(RuntimeError):
        with fs.Staging(final) as failed:
            fs.write_bytes(failed.file("half.txt"), b"half")
            raise RuntimeError("killed midway")
    assert fs.listdir(fs.resolve(final)) == ["_SUCCESS", "_manifest.json", "good.txt"]
    assert _visible(fs.listdir(root)) == ["v1"] and not fs.exists(failed.path)
    assert [n for n in fs.listdir(fs.attempts_dir(final)) if not n.startswith(".")] == [st.attempt]


def test_an_output_of_the_layout_before_attempts_is_read_then_replaced(any_root):
    final = f"{any_root}/v1"
    fs.makedirs(final)
    fs.write_bytes(f"{final}/old.txt", b"old")                           # committed in place, as before
    fs.write_bytes(f"{final}/_SUCCESS", b"")
    assert fs.resolve(final) == final and fs.is_committed(final)
    with fs.Staging(final) as st:
        fs.write_bytes(st.file("new.txt"), b"new")
        st.commit({})
    assert fs.resolve(final) == st.path and fs.read_bytes(f"{fs.resolve(final)}/new.txt") == b"new"


def test_a_commit_that_cannot_write_its_pointer_leaves_the_previous_output(root, monkeypatch, s3_env):
    """A commit refused at its last step (the marker of the new attempt, by policy) publishes nothing:
    the previous output stays committed and whole."""
    endpoint, keys = s3_env
    final = f"{root}/v1"
    with fs.Staging(final) as st:
        fs.write_bytes(st.file("old.txt"), b"old")
        st.commit({"n": 1})
    _as(monkeypatch, *keys["no-marker"], endpoint)
    with pytest.raises(fs.StorageError, match="_SUCCESS: access was refused"):
        with fs.Staging(final) as st:
            fs.write_bytes(st.file("new.txt"), b"new")
            st.commit({"n": 2})
    assert fs.is_committed(final) and fs.read_bytes(f"{fs.resolve(final)}/old.txt") == b"old"
    assert not fs.exists(st.path)                                        # the refused attempt was removed


@pytest.mark.parametrize("root_uri", ["ftp://host/data", "http://host/data", "memory://data", "gcs://b/data",
                                      "az://c/data", "viewfs://cluster/data", "wasb://c@a.blob.core.windows.net/d"])
def test_unsupported_schemes_are_refused_naming_the_supported_ones(root_uri):
    with pytest.raises(fs.StorageError) as e:
        fs.check_root(root_uri)
    msg = str(e.value)
    assert "\n" not in msg and root_uri in msg
    for s in ("local paths", "file://", "s3://", "s3a://", "gs://", "hdfs://", "abfs://", "abfss://",
              "s3fs", "gcsfs", "adlfs", "pyarrow"):
        assert s in msg
    with pytest.raises(fs.StorageError):                                 # and no operation reaches them
        fs.exists(root_uri + "/x")
    with pytest.raises(fs.StorageError) as e:                            # nor a question about what it can do
        fs.scheme_of(root_uri)
    assert str(e.value) == msg


def test_each_scheme_says_what_its_store_can_do(tmp_path):
    """How each side reaches a root: tf.io.gfile (TF 2.21: local, file://, gs://) or scratch copies;
    Spark's Parquet writer or fs; publish by one rename (local, HDFS) or by copies (object stores)."""
    facts = {str(tmp_path): ("local", True, True, True), f"file://{tmp_path}": ("local", True, True, True),
             "s3://b/p": ("s3", False, False, False), "s3a://b/p": ("s3", False, False, False),
             "gs://b/p": ("gs", True, True, False), "hdfs://nn:8020/p": ("hdfs", False, True, True),
             "abfs://c@a.dfs.core.windows.net/p": ("abfs", False, False, False),
             "abfss://c@a.dfs.core.windows.net/p": ("abfs", False, False, False)}
    for root, want in facts.items():
        spec = fs.scheme_of(root)
        assert (spec.name, spec.tf_gfile, spec.spark_parquet, spec.atomic_rename) == want, root
        assert spec.object_store == (spec.remote and not spec.atomic_rename)
        assert spec.consistent_listing
        assert spec.conditional_write == (spec.name in ("local", "s3")), root  # what fs.write_if performs
    assert fs.scheme_of("s3://b/p") is fs.scheme_of("S3A://b/p") and not fs.scheme_of(str(tmp_path)).remote


def test_supported_roots_pass_the_form_check(tmp_path):
    for ok in (str(tmp_path), f"file://{tmp_path}", "relative/dir", "s3://b/p", "s3a://b/p", "gs://b/p",
               "hdfs://namenode:8020/p", "abfs://c@acct.dfs.core.windows.net/p",
               "abfss://c@acct.dfs.core.windows.net/p"):
        assert fs.check_root(ok) == ok


def test_credentials_in_the_uri_are_refused():
    with pytest.raises(fs.StorageError, match="carries a password") as e:
        fs.check_root("s3://AKIAEXAMPLE:topsecretvalue@bucket/p")
    assert "topsecretvalue" not in str(e.value) and "AWS_SECRET_ACCESS_KEY" in str(e.value)


def _one_line_error(call, *args):
    with pytest.raises(fs.StorageError) as e:
        call(*args)
    msg = str(e.value)
    assert "\n" not in msg and e.value.__cause__ is None and e.value.__suppress_context__
    return msg


@pytest.mark.parametrize("which", ["wrong secret", "unknown key id"])
def test_refused_credentials_give_one_line_naming_root_and_variables(root, monkeypatch, s3_env, which):
    endpoint, keys = s3_env
    fs.write_bytes(f"{root}/x", b"1")
    key_id, secret = keys["writer"]
    bad = ("wrongSecretValue0123456789", ) if which == "wrong secret" else ()
    _as(monkeypatch, key_id if bad else "AKIAUNKNOWNKEYID0000", bad[0] if bad else secret, endpoint)
    msg = _one_line_error(fs.check_access, root)
    assert msg.startswith(f"{root}: access was refused")
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_SECRET_ACCESS_KEY" in msg
    assert secret not in msg and "wrongSecretValue0123456789" not in msg
    assert _one_line_error(fs.read_bytes, f"{root}/x").startswith(f"{root}/x: access was refused")


def test_missing_credentials_give_one_line_naming_root_and_variables(root, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    msg = _one_line_error(fs.check_access, root)
    assert msg.startswith(f"{root}: access was refused (NoCredentialsError")
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_SECRET_ACCESS_KEY" in msg


def test_unreachable_endpoint_gives_one_line_naming_root_and_endpoint_variable(root, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    msg = _one_line_error(fs.check_access, root)
    assert msg.startswith(f"{root}: the store could not be reached") and "AWS_ENDPOINT_URL_S3" in msg


def test_check_access_accepts_a_new_root_and_a_used_one(root):
    fs.check_access(root)                                               # nothing written yet
    fs.write_bytes(f"{root}/tfrecords/v1/_SUCCESS", b"")
    fs.check_access(root)
    fs.check_access("s3a://" + root[len("s3://"):])


def test_check_access_of_a_root_that_must_exist(root, tmp_path):
    """What the scripts that read a root ask: a new (empty) prefix, a missing local directory, a missing
    bucket are errors; a used prefix and an existing (even empty) local directory are fine."""
    assert _one_line_error(fs.check_access, root, True) == \
        f"data root {root} does not exist (nothing is stored under it): fix the data root's path"
    fs.write_bytes(f"{root}/serving/CURRENT.json", b"{}")
    fs.check_access(root, must_exist=True)
    assert _one_line_error(fs.check_access, str(tmp_path / "none"), True) == \
        f"data root {tmp_path / 'none'} does not exist: fix the data root's path"
    (tmp_path / "file").write_text("")
    assert "(it is a file)" in _one_line_error(fs.check_access, str(tmp_path / "file"), True)
    fs.check_access(str(tmp_path), must_exist=True)
    assert "the bucket s3://no-such-bucket-for-this does not exist" in \
        _one_line_error(fs.check_access, "s3://no-such-bucket-for-this/data", True)


def test_no_secret_value_reaches_a_message(root, s3_env):
    """Whatever a client library puts in its error, the StorageError never repeats a secret."""
    secret = s3_env[1]["writer"][1]
    with pytest.raises(fs.StorageError) as e:
        with fs._translated(root):
            raise PermissionError(f"signature of {secret} refused")
    assert secret not in str(e.value) and "signature of *** refused" in str(e.value)
    assert fs.SECRET_NAMES.search("AWS_SECRET_ACCESS_KEY") and fs.SECRET_NAMES.search("AWS_ACCESS_KEY_ID")
    assert not fs.SECRET_NAMES.search("AWS_ENDPOINT_URL_S3")


SPARK_DEFAULT_REDACTION = r"(?i)secret|password|token|access[.]?key"  # spark-core 4.2.0, internal/config


@pytest.mark.parametrize("name", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                  "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                                  "AZURE_STORAGE_CONNECTION_STRING",
                                  "AZURE_STORAGE_CLIENT_SECRET", "AZURE_CLIENT_SECRET"])
def test_the_redaction_regex_covers_every_forwarded_secret(name):
    import re
    assert re.search(fs.SPARK_REDACTION_REGEX, f"spark.executorEnv.{name}")
    covered_by_default = bool(re.search(SPARK_DEFAULT_REDACTION, f"spark.executorEnv.{name}"))
    assert covered_by_default == (name not in ("AWS_ACCESS_KEY_ID", "AZURE_STORAGE_ACCOUNT_KEY",
                                               "AZURE_STORAGE_CONNECTION_STRING"))
    assert name in {n for s in fs.SCHEMES.values() for n in s.forward}


def test_executor_env_forwards_what_the_client_reads(root, s3_env, monkeypatch, tmp_path):
    endpoint, keys = s3_env
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "not-for-s3")
    env = fs.executor_env(root)
    assert env["AWS_ACCESS_KEY_ID"] == keys["writer"][0] and env["AWS_SECRET_ACCESS_KEY"] == keys["writer"][1]
    assert env["AWS_ENDPOINT_URL_S3"] == endpoint and "AZURE_STORAGE_ACCOUNT_KEY" not in env
    assert "AWS_CONFIG_FILE" not in env                                  # a path of the driver's, not forwarded
    assert fs.executor_env(str(tmp_path)) == {} and fs.executor_env(f"file://{tmp_path}") == {}
