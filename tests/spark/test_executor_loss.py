"""An executor JVM killed mid-training: the train job ends with one ERROR [train] line naming the lost node,
its host, Spark's reason and the last finished epoch, and the retry resumes from that epoch."""
import json
import os
import re
import signal
import subprocess
import time

import psutil
import pytest

from conftest import TEST_MASTER
from tfospipe import launch, paths

pytestmark = pytest.mark.spark
VERSION = "loss-v1"
RUN = "killed"
EPOCHS = 5


def start_train(root, build_dir, log):
    argv = launch.spark_submit_argv("train", {"data_root": str(root), "version": VERSION, "run_id": RUN,
                                              "epochs": EPOCHS, "batch_size": 16}, TEST_MASTER, 2, str(build_dir))
    return subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, **launch.TF_ENV))


def wait_or_kill(proc, timeout):
    """The exit status of ``proc`` within ``timeout`` s, else None after killing its whole process group."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        try:  # the job's leftovers (a killed executor's Python workers) too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def executor_jvms(pid):
    """``{TFoS node index: (process, Spark executor id)}`` of the executor JVMs under process ``pid``.

    TensorFlowOnSpark writes its node index to ``executor_id`` in the executor's working directory."""
    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
            if any("CoarseGrainedExecutorBackend" in part for part in cmdline):
                with open(os.path.join(child.cwd(), "executor_id")) as f:
                    found[int(f.read().strip())] = (child, cmdline[cmdline.index("--executor-id") + 1])
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory, build_dir):
    from conftest import run_job
    data = tmp_path_factory.mktemp("executor-loss")
    from tfospipe.sample_data import write_version
    write_version(str(data), VERSION, limit=700)
    run = run_job("convert", {"data_root": str(data), "version": VERSION, "num_shards": 2}, build_dir, timeout=300)
    assert run.returncode == 0, run.explain(4000)
    return data


def test_a_killed_executor_ends_training_with_one_error_line_and_the_retry_resumes(root, build_dir, tmp_path):
    run_dir = paths.Layout(str(root)).model_run(VERSION, RUN)
    progress = os.path.join(run_dir, "progress.log")
    proc = start_train(root, build_dir, tmp_path / "attempt-1.log")
    try:
        deadline = time.time() + 300
        while not (os.path.exists(progress) and re.search(r"^epoch 1/", open(progress).read(), re.M)):
            assert proc.poll() is None, "training ended before an epoch finished:\n" + \
                (tmp_path / "attempt-1.log").read_text()[-4000:]
            assert time.time() < deadline, "no epoch finished within 300 s"
            time.sleep(0.3)
        jvms = executor_jvms(proc.pid)
        assert sorted(jvms) == [0, 1], jvms
        victim, spark_id = jvms[1]  # the executor running TensorFlow node worker-1
        victim.send_signal(signal.SIGKILL)
        killed = time.time()
    except BaseException:
        wait_or_kill(proc, 0)
        raise
    status = wait_or_kill(proc, 60)
    failed_after = time.time() - killed
    output = (tmp_path / "attempt-1.log").read_text()
    assert status == 2, f"status {status} {failed_after:.0f} s after the kill:\n{output[-6000:]}"
    print(f"train failed {failed_after:.1f} s after the kill")

    errors = [line for line in output.splitlines() if line.startswith("ERROR [")]
    assert len(errors) == 1, errors
    (error,) = errors
    print(error)
    assert output.rstrip().splitlines()[-1] == error  # it ends the task log: no stack trace after it
    done = int(re.findall(r"^epoch (\d+)/", open(progress).read(), re.M)[-1])
    assert 1 <= done < EPOCHS
    assert error.startswith(f"ERROR [train] TensorFlow node worker-1 was lost with Spark executor {spark_id} on host ")
    assert re.search(r"on host \S+: ExecutorLostFailure \(executor \S+ exited[^)]*\) Reason: Command exited with "
                     r"code 137\. ", error), error
    assert f"The last finished epoch is {done} of {EPOCHS}" in error
    assert f"Airflow's retry, or a rerun under the same run id, resumes from it at epoch {done + 1}" in error
    assert "Collective ops" not in error and "Traceback" not in error  # the other node's abort is not the cause

    # the retry, as Airflow runs it: same run id
    proc = start_train(root, build_dir, tmp_path / "attempt-2.log")
    status = wait_or_kill(proc, 600)
    assert status == 0, (tmp_path / "attempt-2.log").read_text()[-6000:]
    second = open(progress).read()
    epochs = [int(e) for e in re.findall(r"^epoch (\d+)/", second, re.M)]
    manifest = json.load(open(os.path.join(run_dir, "_manifest.json")))
    assert epochs == list(range(done + 1, EPOCHS + 1))  # it started after the last finished epoch
    assert int(re.search(r"^step (\d+) ", second, re.M).group(1)) > done * manifest["steps_per_epoch"]
    assert [w["epochs_run"] for w in manifest["workers"]] == [EPOCHS - done] * 2
