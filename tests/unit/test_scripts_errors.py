"""scripts/serving.py and scripts/lineage.py on a root they cannot read: refused credentials, an unsupported
scheme, a bucket or root that does not exist. Each ends with exit status 2 and one ``error:`` line on stderr
(the storage layer's own message, fs.check_access), no traceback, no secret. Run as subprocesses, against
the real S3 API of the session's ``moto`` fixture (a moto_server on loopback with IAM users)."""
import os
import subprocess
import sys
import uuid

import pytest

from conftest import MOTO_BUCKET, PROJECT_DIR

SCRIPTS = {
    "serving list": ["serving.py", "--root", "{root}", "list"],
    "serving history": ["serving.py", "--root", "{root}", "history"],
    "serving rollback": ["serving.py", "--root", "{root}", "rollback"],
    "lineage": ["lineage.py", "2026-11-28", "123", "--root", "{root}"],
}
WRONG_SECRET = "wrongSecretValue0123456789"


@pytest.fixture
def s3_env(moto, tmp_path):
    """The environment a script runs in: the writer's credentials and the server's endpoint, nothing from
    this machine's AWS configuration."""
    endpoint, keys = moto
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=keys["writer"][0], AWS_SECRET_ACCESS_KEY=keys["writer"][1],
               AWS_ENDPOINT_URL_S3=endpoint, AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"), AWS_MAX_ATTEMPTS="1")
    return env


def run_script(which, root, env):
    script, *argv = SCRIPTS[which]
    proc = subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "scripts", script),
                           *[a.format(root=root) for a in argv]],
                          capture_output=True, text=True, timeout=120, env=env)
    return proc


def one_error_line(proc):
    """The one ``error:`` line of a script that exited with status 2, and nothing else on stderr."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize("which", list(SCRIPTS))
def test_refused_credentials_give_one_error_line(which, s3_env, moto):
    root = f"s3://{MOTO_BUCKET}/scripts-{uuid.uuid4().hex[:8]}"
    env = dict(s3_env, AWS_SECRET_ACCESS_KEY=WRONG_SECRET)
    line = one_error_line(run_script(which, root, env))
    assert line.startswith(f"error: {root}: access was refused")
    assert "AWS_ACCESS_KEY_ID" in line and "AWS_SECRET_ACCESS_KEY" in line
    assert WRONG_SECRET not in line and moto[1]["writer"][1] not in line


@pytest.mark.parametrize("which", ["serving history", "lineage"])
def test_an_unsupported_scheme_gives_one_error_line_naming_the_supported_ones(which, s3_env):
    line = one_error_line(run_script(which, "gcs://bucket/data", s3_env))
    assert line.startswith("error: data root gcs://bucket/data has the unsupported scheme gcs://: use one of")
    assert "gs://" in line and "s3://" in line


@pytest.mark.parametrize("which", ["serving history", "serving list", "lineage"])
def test_a_bucket_that_does_not_exist_is_an_error_not_an_empty_history(which, s3_env):
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    line = one_error_line(run_script(which, f"s3://{bucket}/data", s3_env))
    assert line == f"error: s3://{bucket}/data: the bucket s3://{bucket} does not exist; create it or fix the data root"


@pytest.mark.parametrize("which", ["serving history", "lineage"])
def test_a_root_that_does_not_exist_is_an_error(which, s3_env, tmp_path):
    missing = tmp_path / "no-such-root"
    line = one_error_line(run_script(which, str(missing), s3_env))
    assert line == f"error: data root {missing} does not exist: fix the data root's path"
    empty_prefix = f"s3://{MOTO_BUCKET}/never-written-{uuid.uuid4().hex[:8]}"  # an object store has no empty dirs
    line = one_error_line(run_script(which, empty_prefix, s3_env))
    assert line.startswith(f"error: data root {empty_prefix} does not exist (nothing is stored under it)")


def test_a_readable_root_still_works(s3_env, tmp_path):
    """The check lets through a root that exists: an empty local one, and a used bucket prefix."""
    tmp_path.joinpath("root").mkdir()
    proc = run_script("serving history", str(tmp_path / "root"), s3_env)
    assert proc.returncode == 0 and "no serving history in" in proc.stdout, proc.stderr
    root = f"s3://{MOTO_BUCKET}/scripts-{uuid.uuid4().hex[:8]}"
    import boto3
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                 aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"]).put_object(
        Bucket=MOTO_BUCKET, Key=root.split("/", 3)[3] + "/raw/v1/a.csv", Body=b"1,2\n")
    proc = run_script("serving list", root, s3_env)
    assert proc.returncode == 0 and "no promoted model in" in proc.stdout, proc.stderr
