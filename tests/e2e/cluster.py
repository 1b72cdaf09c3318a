"""A Spark standalone cluster whose workers share nothing with the Airflow host but the network.

* Spark itself runs from a copy of pip's pyspark install (``bin/``, ``sbin/``, ``jars/``,
  ``python/lib/``: Spark's own ``pyspark.zip`` and ``py4j`` zip) under ``NODES/spark``, outside the
  project and its ``.venv``, as a node's Spark install would be.
* The master runs on ``spark://127.0.0.1:PORT``. Each worker runs in its own mount namespace
  (``unshare --mount``, root only) where every path in ``hidden`` (the checkout, its ``.venv``, the
  Airflow home, the local data directories) and ``/tmp`` are covered by an empty tmpfs, with a clean
  environment (no ``AWS_*``, no ``PYTHONPATH``, no ``VIRTUAL_ENV``). Its executors therefore have only
  what a remote node has: Java, the system's Python at its system path, the environment archive and
  the ``--py-files`` zip that the driver ships, and the object store on the network.
* Workers delete the working directories of finished applications (``spark.worker.cleanup.*``):
  each executor unpacks the archive (~1.9 GiB) there.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

#: What a node needs of pip's pyspark: the launch scripts, the jars and Spark's Python zips.
SPARK_PARTS = ("bin", "sbin", "jars", os.path.join("python", "lib"))


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where ``src`` and ``dst`` share a file system (fast: 460 MiB of jars), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def spark_copy(dest: str) -> str:
    """A Spark install at ``dest`` made from pip's pyspark (the parts of :data:`SPARK_PARTS`); returns ``dest``."""
    import pyspark
    src = os.path.dirname(pyspark.__file__)
    for part in SPARK_PARTS:
        shutil.copytree(os.path.join(src, part), os.path.join(dest, part), copy_function=_link_or_copy)
    return dest


def hide_script(hidden: list[str]) -> str:
    """Shell lines that cover each existing path of ``hidden`` and then ``/tmp`` with an empty tmpfs.

    A path under another one (or under ``/tmp``) is covered with it."""
    lines, covered = [], ["/tmp"]
    for path in sorted({os.path.realpath(p) for p in hidden}):  # a parent sorts before its children
        if os.path.isdir(path) and not any(path == c or path.startswith(c + "/") for c in covered):
            lines.append(f"mount -t tmpfs -o size=1m,mode=0755 tfos-hidden '{path}'")
            covered.append(path)
    lines.append("mount -t tmpfs -o size=2g,mode=1777 tfos-node-tmp /tmp")
    return "\n".join(lines)


class IsolatedCluster:
    """A master and ``workers`` 1-core workers of ``memory`` each; ``hidden``: paths the workers must not see."""

    def __init__(self, nodes_dir: str, hidden: list[str], workers: int = 2, memory: str = "2g",
                 port: int = 7077, webui_port: int = 8080):
        self.dir = nodes_dir
        self.hidden = list(hidden)
        self.workers, self.memory = workers, memory
        self.master = f"spark://127.0.0.1:{port}"
        self.port, self.webui_port = port, webui_port
        self.spark_home = os.path.join(nodes_dir, "spark")
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, node_dir: str) -> dict[str, str]:
        """The clean environment of a Spark daemon: Java (and the test run's ``JAVA_TOOL_OPTIONS``), the Spark
        copy, loopback, nothing of the host's venv."""
        java_home = os.path.dirname(os.path.dirname(os.path.realpath(shutil.which("java"))))
        return {"PATH": f"{java_home}/bin:/usr/local/bin:/usr/bin:/bin", "JAVA_HOME": java_home,
                "SPARK_HOME": self.spark_home, "HOME": node_dir, "LANG": "C.UTF-8",
                "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOCAL_HOSTNAME": "127.0.0.1",
                "SPARK_LOG_DIR": node_dir, "SPARK_PID_DIR": node_dir,
                "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=20 "
                                     "-Dspark.worker.cleanup.appDataTtl=5",
                # the JVM settings of the test run (scripts/test.sh: C1-only compilation), as a node's own
                **{k: os.environ[k] for k in ("JAVA_TOOL_OPTIONS",) if k in os.environ}}

    def _start(self, name: str, argv: list[str], isolated: bool) -> None:
        node_dir = os.path.join(self.dir, name)
        os.makedirs(node_dir, exist_ok=True)
        command = " ".join(f"'{a}'" for a in argv)
        script = f"set -e\n{hide_script(self.hidden)}\ncd '{node_dir}'\nexec {command}" if isolated else \
            f"cd '{node_dir}' && exec {command}"
        launcher = ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", script] if isolated else \
            ["bash", "-c", script]
        log = open(os.path.join(node_dir, f"{name}.out"), "w")
        self.procs[name] = subprocess.Popen(launcher, env=self.env(node_dir), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def start(self) -> IsolatedCluster:
        """Copy Spark, start the master and the isolated workers; wait until every worker is ALIVE (90 s)."""
        if not os.path.isdir(self.spark_home):
            spark_copy(self.spark_home)
        spark_class = os.path.join(self.spark_home, "bin", "spark-class")
        self._start("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(self.port), "--webui-port", str(self.webui_port)], isolated=False)
        for i in range(1, self.workers + 1):
            work = os.path.join(self.dir, f"worker-{i}", "work")
            os.makedirs(work, exist_ok=True)
            self._start(f"worker-{i}", [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                        "--cores", "1", "--memory", self.memory, "--webui-port", "0",
                                        "--work-dir", work, self.master], isolated=True)
        deadline = time.monotonic() + 90
        while self.alive_workers() < self.workers:
            url = self._status().get("url")
            if url and url != self.master:  # Spark moves to the next port when one is taken
                raise RuntimeError(f"the master listens on {url}, not {self.master}: is another cluster running?")
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"Spark {name} exited ({proc.returncode}):\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.alive_workers()} of {self.workers} workers registered:\n"
                                   + self.log("worker-1"))
            time.sleep(1)
        return self

    def status(self) -> dict:
        """The master's JSON status (``/json/``: workers, active and completed applications)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.webui_port}/json/", timeout=10) as r:
            return json.load(r)

    def _status(self) -> dict:
        try:
            return self.status()
        except OSError:
            return {}

    def alive_workers(self) -> int:
        return sum(1 for w in self._status().get("workers", ()) if w["state"] == "ALIVE")

    def log(self, name: str, tail: int = 4000) -> str:
        with open(os.path.join(self.dir, name, f"{name}.out")) as f:
            return f.read()[-tail:]

    def in_worker(self, i: int, argv: list[str]) -> subprocess.CompletedProcess:
        """Run ``argv`` in worker ``i``'s mount namespace (``nsenter``): what that node sees."""
        pid = self.procs[f"worker-{i}"].pid
        return subprocess.run(["nsenter", "-t", str(pid), "-m", "--"] + argv, capture_output=True, text=True,
                              timeout=30)

    def stop(self) -> None:
        """Stop every daemon (SIGTERM, SIGKILL after 30 s); the executors end with their workers."""
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
                proc.wait()
