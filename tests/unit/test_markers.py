"""The nodes' done/error marker protocol (no Spark, no TensorFlow): names, paths, writing, reading,
waiting, and which failed node the driver names first."""
import os
import threading
import time
from types import SimpleNamespace

import pytest

from tfospipe import markers, nodefailure, train
from tfospipe.runner import JobError


def ctx(job_name, task_index):
    return SimpleNamespace(job_name=job_name, task_index=task_index)


def test_node_names_chief_workers_and_parameter_servers():
    assert markers.node_name(ctx("chief", 0)) == "worker-0"
    assert markers.node_name(ctx("worker", 0)) == "worker-1"
    assert markers.node_name(ctx("worker", 2)) == "worker-3"
    assert markers.node_name(ctx("ps", 1)) == "ps-1"
    assert markers.worker_names(3) == ["worker-0", "worker-1", "worker-2"]


def test_node_of_task_follows_the_reservations_else_tfos_template():
    info = [{"executor_id": 0, "job_name": "worker", "task_index": 0},
            {"executor_id": 1, "job_name": "chief", "task_index": 0}]
    assert nodefailure.node_of_task(1, info, 0) == "worker-0" and nodefailure.node_of_task(0, info, 0) == "worker-1"
    # template: parameter servers first, then the chief, then the workers
    assert [nodefailure.node_of_task(t, None, 2) for t in range(5)] == ["ps-0", "ps-1", "worker-0", "worker-1", "worker-2"]


def test_done_markers_are_written_and_read_back_by_node(tmp_path, capsys):
    run_dir = str(tmp_path)
    os.makedirs(markers.markers_dir(run_dir))
    markers.write_done(run_dir, "worker-0", {"worker": 0, "steps_run": 6})
    markers.write_done(run_dir, "ps-0", {"job_name": "ps", "task_index": 0})
    markers.write_error(run_dir, "worker-1", "Traceback\nValueError: boom\n")
    assert markers.done_path(run_dir, "worker-0") == str(tmp_path / "workers" / "worker-0.json")
    assert os.path.exists(tmp_path / "workers" / "worker-0.json")
    assert markers.read_done(run_dir) == {"worker-0": {"worker": 0, "steps_run": 6},
                                          "ps-0": {"job_name": "ps", "task_index": 0}}
    assert 'TFOS done {"worker": 0, "steps_run": 6}' in capsys.readouterr().out


def test_an_error_marker_holds_the_traceback_being_handled(tmp_path):
    run_dir = str(tmp_path)
    os.makedirs(markers.markers_dir(run_dir))
    try:
        raise ValueError("boom")
    except ValueError:
        markers.write_error(run_dir, "worker-1")
    text = open(markers.error_path(run_dir, "worker-1")).read()
    assert markers.error_path(run_dir, "worker-1") == str(tmp_path / "workers" / "worker-1.error")
    assert text.startswith("Traceback") and text.rstrip().endswith("ValueError: boom")
    assert markers.failed_nodes(run_dir) == ["worker-1"] and markers.read_done(run_dir) == {}


def write_error_at(run_dir, node, text, mtime):
    markers.write_error(run_dir, node, text)
    os.utime(markers.error_path(run_dir, node), (mtime, mtime))


def test_a_node_that_failed_on_its_own_comes_before_those_aborted_because_of_it(tmp_path):
    run_dir = str(tmp_path)
    os.makedirs(markers.markers_dir(run_dir))
    now = time.time()
    # the aborted collective's marker is the earliest, yet not the cause
    write_error_at(run_dir, "worker-0", "Traceback\nCollective ops is aborted by: peer gone\n", now - 30)
    write_error_at(run_dir, "worker-2", "Traceback\nOSError: disk full\n", now - 10)
    write_error_at(run_dir, "worker-1", "Traceback\nDataLossError: truncated record\n", now - 20)
    assert [n for n, _ in markers.node_errors(run_dir)] == ["worker-1", "worker-2", "worker-0"]
    assert markers.node_errors(run_dir)[0][1].endswith("DataLossError: truncated record\n")


def test_the_driver_names_the_first_failed_node_and_the_others_after_it(tmp_path, capsys):
    run_dir = str(tmp_path)
    os.makedirs(markers.markers_dir(run_dir))
    now = time.time()
    write_error_at(run_dir, "worker-0", "Traceback\nUnavailableError: Socket closed\n", now - 5)
    write_error_at(run_dir, "worker-1", "Traceback\nDataLossError: truncated record\n", now)
    error = str(nodefailure.failure_error(run_dir))
    assert error.startswith("TensorFlow node worker-1 failed: DataLossError: truncated record; then worker-0 "
                            "failed too. Full traceback in ")
    assert markers.error_path(run_dir, "worker-1") in error
    assert "traceback of TensorFlow node worker-1" in capsys.readouterr().err
    empty = tmp_path / "empty"
    assert "no node left an error marker" in str(nodefailure.failure_error(str(empty), "exit 1"))


def test_wait_done_returns_once_every_node_left_its_done_marker(tmp_path):
    run_dir = str(tmp_path)
    os.makedirs(markers.markers_dir(run_dir))
    markers.write_done(run_dir, "worker-0", {"worker": 0})
    later = threading.Timer(0.1, markers.write_done, (run_dir, "worker-1", {"worker": 1}))
    later.start()
    started = time.time()
    markers.wait_done(run_dir, ["worker-0", "worker-1"], timeout=5, poll_seconds=0.01)
    assert 0.05 < time.time() - started < 4
    later.join()


def test_wait_done_raises_as_soon_as_any_node_left_an_error(tmp_path):
    run_dir = str(tmp_path)
    os.makedirs(markers.markers_dir(run_dir))
    markers.write_done(run_dir, "worker-0", {"worker": 0})
    markers.write_error(run_dir, "ps-0", "Traceback\nOSError\n")
    with pytest.raises(markers.NodeFailed) as failed:
        markers.wait_done(run_dir, ["worker-0"], timeout=5, poll_seconds=0.01)  # even with worker-0 done
    assert failed.value.nodes == ["ps-0"]


def test_wait_done_gives_up_at_the_timeout_naming_the_markers_there(tmp_path):
    run_dir = str(tmp_path)
    os.makedirs(markers.markers_dir(run_dir))
    markers.write_done(run_dir, "worker-1", {"worker": 1})
    with pytest.raises(markers.MarkersTimeout) as timeout:
        markers.wait_done(run_dir, ["worker-0", "worker-1"], timeout=0.05, poll_seconds=0.01)
    assert timeout.value.missing == ["worker-0"] and timeout.value.names == ["worker-1.json"]
    with pytest.raises(JobError, match=r"nodes did not finish within 0.05s .*\['worker-1.json'\]"):
        train.await_nodes(run_dir, 2, 0.05)
