"""A real deployment on this machine for the end-to-end tests: the docker-compose services, run natively.

* Spark standalone: a master on ``spark://127.0.0.1:<free port>`` and two 1-core workers
  (``scripts/spark_standalone.sh``, the same ``spark-class`` commands as the compose services).
* Airflow 3: ``api-server``, ``scheduler`` and ``dag-processor`` with the LocalExecutor, a
  project-local AIRFLOW_HOME (SQLite), the simple auth manager with one admin user.
* TensorBoard over the data root's ``models/`` (a local root), where the task links point, as ``make ui``
  starts it.
* A scheduled run waits :data:`DATA_WAIT_S` seconds for its data (``TFOS_DATA_WAIT_TIMEOUT``: the DAG's
  ``data_wait_timeout`` default), not the deployment's hours.

``python tests/e2e/services.py up DIR`` starts the same stack by hand (Ctrl-C stops it).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER, PASSWORD = "admin", "tfos-e2e-password"
#: Seconds a scheduled run of these stacks waits for its dataset version's input (wait_for_data).
DATA_WAIT_S = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The services, their environment (``env``: overrides of the defaults below, e.g. a remote data
    root and its credentials) and, when given, a ``cluster`` to start instead of
    ``scripts/spark_standalone.sh`` (an object with ``start()`` and ``stop()``, its master URL as
    ``master`` and its status page's port as ``webui_port``). Every port is a free one, so two stacks can
    run at once (the two end-to-end modules, on two test workers)."""

    def __init__(self, base_dir, env=None, cluster=None):
        self.base = str(base_dir)
        self.home = os.path.abspath(os.path.join(self.base, "airflow"))
        self.root = os.path.join(self.base, "data")
        self.spark_dir = os.path.join(self.base, "spark")
        self.api_port, self.spark_ui_port = free_port(), free_port()
        self.tensorboard_port = free_port()
        self.tensorboard = f"http://127.0.0.1:{self.tensorboard_port}"
        self.spark_port = free_port()
        self.spark_master = f"spark://127.0.0.1:{self.spark_port}" if cluster is None else cluster.master
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.spark_ui = f"http://127.0.0.1:{self.spark_ui_port}"
        self.user, self.password = USER, PASSWORD
        self.procs = {}
        self._token = None
        os.makedirs(self.home, exist_ok=True)
        passwords = os.path.join(self.home, "passwords.json")
        with open(passwords, "w") as f:
            json.dump({USER: PASSWORD}, f)
        self.env = dict(
            os.environ,
            AIRFLOW_HOME=self.home,
            # three Airflow services and CLI commands share one SQLite file: a writer waits up to 60 s
            # for the lock (pysqlite gives up after 5 s, which a busy 2-core machine can exceed)
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.home}/airflow.db?timeout=60",
            AIRFLOW_VAR_TFOS_DATA_ROOT=self.root,
            AIRFLOW_VAR_TFOS_TENSORBOARD_URL=self.tensorboard,
            TFOS_DATA_WAIT_TIMEOUT=str(DATA_WAIT_S),
            # OpenLineage: the provider's listener writes every task's events to a file (the e2e check reads
            # them), and the Spark provider passes the task's run to spark-submit as parent job info
            AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps({"type": "file", "append": False,
                                                        "log_file_path": os.path.join(self.home, "openlineage-events")}),
            AIRFLOW__OPENLINEAGE__NAMESPACE="tfos_e2e",
            AIRFLOW__OPENLINEAGE__SPARK_INJECT_PARENT_JOB_INFO="true",
            AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": self.spark_master}),
            TFOS_BUILD_DIR=os.path.join(self.base, "build"),
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM="2",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__API__BASE_URL=self.url,
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__API__WORKERS="1",
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__API_AUTH__JWT_SECRET="tfos-e2e-jwt-secret-not-for-production",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=passwords,
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
            SPARK_STANDALONE_DIR=self.spark_dir,
            SPARK_MASTER_PORT=str(self.spark_port),
            SPARK_MASTER_WEBUI_PORT=str(self.spark_ui_port),
            SPARK_WORKER_MEMORY="2g",
        )
        self.env.update(env or {})
        self.root = self.env["AIRFLOW_VAR_TFOS_DATA_ROOT"]
        self.cluster = cluster
        if cluster is not None:  # its master's UI
            self.spark_ui_port = cluster.webui_port
            self.spark_ui = f"http://127.0.0.1:{cluster.webui_port}"

    # -- processes -----------------------------------------------------------------------------
    def sh(self, command, timeout=600, check=True):
        """Run ``command`` in bash with scripts/env.sh sourced and this stack's environment."""
        proc = subprocess.run(["bash", "-c", f'source "{PROJECT_DIR}/scripts/env.sh" && {command}'],
                              env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, cwd=PROJECT_DIR)
        if check and proc.returncode != 0:
            raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
        return proc.stdout

    def _daemon(self, name, command):
        log = open(os.path.join(self.base, f"{name}.log"), "w")
        self.procs[name] = subprocess.Popen(
            ["bash", "-c", f'source "{PROJECT_DIR}/scripts/env.sh" && exec {command}'], env=self.env,
            stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_DIR, start_new_session=True)

    def start(self):
        if self.cluster is None:
            self.sh("bash scripts/spark_standalone.sh start 2", timeout=180)
        else:
            self.cluster.start()
        self.sh("bash scripts/airflow_setup.sh", timeout=300)
        if "://" not in self.root:  # TensorBoard reads local logs here (remote ones need TensorFlow I/O plugins)
            os.makedirs(os.path.join(self.root, "models"), exist_ok=True)
            self._daemon("tensorboard", f"tensorboard --logdir {self.root}/models --host 127.0.0.1 "
                                        f"--port {self.tensorboard_port}")
        self._daemon("api-server", f"airflow api-server --host 127.0.0.1 --port {self.api_port}")
        self._daemon("scheduler", "airflow scheduler")
        self._daemon("dag-processor", "airflow dag-processor")
        self.wait(lambda: self._healthy(), 180, "the Airflow API server to answer")
        self.wait(lambda: self.get("/api/v2/dags/tfos_pipeline", ok_missing=True), 240,
                  "the dag-processor to parse dags/tfos_pipeline.py")
        return self

    def stop(self):
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self.cluster is None:
            self.sh("bash scripts/spark_standalone.sh stop", check=False)
        else:
            self.cluster.stop()

    def _healthy(self):
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def logs(self, name, tail=4000):
        with open(os.path.join(self.base, f"{name}.log")) as f:
            return f.read()[-tail:]

    # -- REST API ------------------------------------------------------------------------------
    def token(self):
        if self._token is None:
            req = urllib.request.Request(f"{self.url}/auth/token", method="POST",
                                         data=json.dumps({"username": USER, "password": PASSWORD}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                self._token = json.load(r)["access_token"]
        return self._token

    def request(self, method, path, body=None, raw=False):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token()}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
        return data if raw else json.loads(data)

    def get(self, path, ok_missing=False):
        try:
            return self.request("GET", path)
        except urllib.error.HTTPError as e:
            if ok_missing and e.code == 404:
                return None
            raise

    def runs(self):
        return self.get("/api/v2/dags/tfos_pipeline/dagRuns?limit=100&order_by=logical_date")["dag_runs"]

    def task_instances(self, run_id):
        path = f"/api/v2/dags/tfos_pipeline/dagRuns/{run_id}/taskInstances"
        return {ti["task_id"]: ti for ti in self.get(path)["task_instances"]}

    def wait_runs(self, select, count, timeout):
        """Wait until ``count`` runs match ``select`` and all have finished; return them."""
        def finished():
            runs = [r for r in self.runs() if select(r)]
            if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            return None
        return self.wait(finished, timeout, f"{count} dag runs to finish")

    def spark_apps(self):
        with urllib.request.urlopen(f"{self.spark_ui}/json/", timeout=10) as r:
            status = json.load(r)
        return status["activeapps"], status["completedapps"]

    def wait(self, condition, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"airflow {name} exited ({proc.returncode}):\n{self.logs(name)}")
            time.sleep(3)
        raise AssertionError(f"timed out after {timeout} s waiting for {what};\nscheduler log:\n"
                             + self.logs("scheduler"))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "up":
        sys.exit("usage: services.py up DIR")
    stack = Stack(os.path.abspath(sys.argv[2]))
    stack.start()
    print(f"Airflow UI {stack.url} ({USER} / {PASSWORD}), Spark master {stack.spark_master} (UI {stack.spark_ui}), "
          f"data root {stack.root}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    finally:
        stack.stop()
