"""A training node's progress arithmetic and callbacks, without training: the steady rate (epochs after
the first, evaluation excluded; steps after the first execution), examples/s, step counts, and the
progress lines the driver reads back. Imports TensorFlow (the callbacks are Keras callbacks) but runs
no model."""
from types import SimpleNamespace

import pytest

from tfospipe import nodefailure, progress


def test_the_epoch_rate_leaves_out_the_first_epoch_and_every_evaluation():
    spans = progress.EpochSpans()
    for begin, evaluation in ((0.0, 10.0), (12.0, 16.0), (20.0, 26.0)):
        spans.epoch_begins(begin)
        spans.evaluation_begins(evaluation)
        spans.evaluation_begins(evaluation + 1.0)  # a second evaluation hook does not move the end
    # epochs 2 and 3: 4 s + 6 s of training for 2 x 640 examples; epoch 1 (10 s) and the evaluations are out
    assert spans.steady_rate(640) == pytest.approx(2 * 640 / 10.0)


def test_a_single_epoch_gives_its_own_rate_and_none_without_one():
    spans = progress.EpochSpans()
    assert spans.steady_rate(640) is None
    spans.epoch_begins(0.0)
    assert spans.steady_rate(640) is None  # its evaluation never began: no span yet
    spans.evaluation_begins(8.0)
    assert spans.steady_rate(640) == pytest.approx(80.0)


def test_the_step_rate_leaves_out_the_first_execution_and_every_evaluation():
    rate = progress.StepRate(step_examples=32, first_steps=10, now=0.0)
    rate.epoch_begins()
    rate.batch_ends(9, now=5.0)    # the first execution of 10 steps (tracing): not steady
    rate.batch_ends(19, now=6.0)   # 10 steps in 1 s
    rate.batch_ends(24, now=6.5)   # a short last execution: 5 steps in 0.5 s
    rate.epoch_begins()            # evaluation ran meanwhile: the gap until the next execution is not counted
    rate.batch_ends(9, now=20.0)
    rate.batch_ends(19, now=22.0)  # 10 steps in 2 s
    assert (rate.step, rate.steady_steps, rate.steady_seconds) == (45, 25, pytest.approx(3.5))
    assert rate.steady_rate() == pytest.approx(25 * 32 / 3.5)
    assert rate.examples_per_second(now=22.0) == pytest.approx(45 * 32 / 22.0)


def test_no_steady_rate_before_a_step_after_the_first_execution():
    rate = progress.StepRate(step_examples=32, first_steps=10, now=0.0)
    rate.epoch_begins()
    rate.batch_ends(9, now=5.0)
    assert rate.steady_rate() is None
    assert rate.examples_per_second(now=0.0) == pytest.approx(10 * 32 / 1e-6)  # never a division by zero


class FakeModel:
    def __init__(self):
        self.optimizer = SimpleNamespace(iterations=SimpleNamespace(numpy=lambda: self.step))
        self.step = 0


def test_the_progress_callback_writes_lines_and_keeps_the_steady_step_rate(monkeypatch):
    clock = iter([0.0, 0.0, 5.0, 6.0, 7.0, 7.5, 20.0, 22.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    lines = []
    cb = progress.Progress(lines.append, epochs=2, examples_per_epoch=640, step_examples=32, steps_per_execution=10)
    model = FakeModel()
    cb.set_model(model)
    logs = {"loss": 0.5, "accuracy": 0.75}
    cb.on_epoch_begin(0)                      # t=0
    for batch in (9, 19):                     # t=5, 6
        model.step = batch + 1
        cb.on_train_batch_end(batch, logs)
    cb.on_test_begin()                        # t=7
    cb.on_epoch_end(0, dict(logs, val_loss=0.25, val_accuracy=0.875))
    cb.on_epoch_begin(1)                      # t=7.5
    for batch in (9, 19):                     # t=20, 22
        model.step = 20 + batch + 1
        cb.on_train_batch_end(batch, logs)
    cb.on_train_end()
    assert lines[0] == "step 10 loss 0.5000 accuracy 0.7500 examples/s 64"
    assert lines[2] == "epoch 1/2 step 20 loss 0.5000 accuracy 0.7500 eval_loss 0.2500 eval_accuracy 0.8750"
    assert cb.examples_per_second == pytest.approx(20 * 32 / 3.0)  # steps 11-20 and 31-40, in 1 s + 2 s


def test_the_epoch_progress_callback_keeps_the_epoch_rate(monkeypatch):
    clock = iter([0.0, 10.0, 12.0, 16.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    cb = progress.EpochProgress(lambda line: None, epochs=2, examples_per_epoch=640)
    for _ in range(2):
        cb.on_epoch_begin(0)
        cb.on_test_begin()
    cb.on_train_end()
    assert cb.examples_per_second == pytest.approx(640 / 4.0)


def test_step_count_counts_partial_executions_per_epoch_and_evaluation():
    count = progress.StepCount()
    for _ in range(2):
        count.on_epoch_begin(0)
        for batch in (9, 19, 22):  # Keras reports each execution's last step index
            count.on_train_batch_end(batch)
        count.on_test_begin()
        for batch in (0, 1, 2):
            count.on_test_batch_end(batch)
        count.on_test_end()
        count.on_epoch_end(0)
    assert (count.train, count.eval) == (46, 6)


def test_the_driver_reads_the_last_finished_epoch_from_the_epoch_lines(tmp_path):
    logs = {"loss": 1.0, "accuracy": 0.5}
    (tmp_path / "progress.log").write_text("\n".join([
        progress.epoch_line(1, 12, 10, logs), progress.step_line(15, logs, 300.0),
        progress.epoch_line(2, 12, 20, logs)]) + "\n")
    assert nodefailure.last_finished_epoch(str(tmp_path)) == (2, 12)
    assert progress.epoch_line(2, 12, 20, logs).endswith("eval_loss nan eval_accuracy nan")
