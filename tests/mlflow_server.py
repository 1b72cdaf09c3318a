"""A real MLflow tracking server on loopback for the tests of the MLflow mirror (tfospipe.tracking).

``mlflow server`` with a SQLite backend store and a local artifact destination under ``base``, on a free
port, its job runner off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: the server otherwise starts
eight huey consumer processes the mirror never uses) and one worker. Start-up: ~7 CPU s, ~10-20 s on
2 busy cores. One per test module (module-scoped fixtures call :func:`serve`).
"""
import os
import signal
import subprocess
import sys
import time
import urllib.request

from conftest import free_port

#: How long the server may take to answer /health.
START_TIMEOUT_S = 120


def serve(base):
    """Start the server under the directory ``base``; yield its URI; stop it (its whole process group)."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(os.path.join(base, "server.log"), "w")
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{base}/mlflow.db",
         "--artifacts-destination", os.path.join(base, "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                with open(os.path.join(base, "server.log")) as f:
                    raise AssertionError(f"mlflow server did not start:\n{f.read()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
