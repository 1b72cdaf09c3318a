"""docker-compose.yaml: a valid Compose file (checked by Debian's docker-compose) with the promised shape."""
import os
import shutil
import subprocess

import pytest
import yaml

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
SPARK_SERVICES = ("spark-master", "spark-worker-1", "spark-worker-2")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    if not shutil.which("docker-compose"):
        pytest.fail("docker-compose is not installed: run scripts/system_deps.sh (make test does)")
    work = tmp_path_factory.mktemp("compose")
    shutil.copy(os.path.join(PROJECT_DIR, "docker-compose.yaml"), work)
    shutil.copy(os.path.join(PROJECT_DIR, ".env.example"), work / ".env")  # the file a user copies
    proc = subprocess.run(["docker-compose", "config"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_every_service_is_there_and_built_from_one_image(config):
    services = config["services"]
    assert set(services) == {"postgres", "airflow-init", *AIRFLOW_SERVICES, *SPARK_SERVICES}
    images = {services[s]["image"] for s in ("airflow-init", *AIRFLOW_SERVICES, *SPARK_SERVICES)}
    assert images == {"tfos-pipeline:latest"}
    assert all(services[s]["build"]["context"] for s in AIRFLOW_SERVICES)


def test_airflow_uses_local_executor_postgres_and_the_spark_master(config):
    for name in AIRFLOW_SERVICES:
        env = config["services"][name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert '"spark://spark-master:7077"' in env["AIRFLOW_CONN_SPARK_DEFAULT"]
        assert env["AIRFLOW_VAR_TFOS_DATA_ROOT"] == "/data"
    for name in ("spark-worker-1", "spark-worker-2", *AIRFLOW_SERVICES):
        targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in config["services"][name]["volumes"]]
        assert "/data" in targets, name


def test_ports_are_bound_to_localhost_only(config):
    published = [p for s in config["services"].values() for p in s.get("ports", [])]
    assert published
    for port in published:
        assert port.get("host_ip") == "127.0.0.1" if isinstance(port, dict) else port.startswith("127.0.0.1:")


def test_no_secret_is_committed():
    with open(os.path.join(PROJECT_DIR, "docker-compose.yaml")) as f:
        text = f.read()
    for key in ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY"):
        assert f"${{{key}}}" in text or key not in text  # only ever interpolated from .env
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=PROJECT_DIR).returncode
    assert ignored == 0, ".env must be git-ignored"
