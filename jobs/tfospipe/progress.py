"""progress: the Keras callbacks of a training node: progress lines, the steady training rate, step counts.

The chief appends its progress lines to ``<run_dir>/progress.log``, which the driver echoes into the task
log; the driver's :func:`tfospipe.train.last_finished_epoch` reads its ``epoch N/E`` lines. The rate
arithmetic is in plain classes (:class:`EpochSpans`, :class:`StepRate`) that the callbacks call, so it
can be checked without training. On a root ``tf.io.gfile`` cannot reach (``s3://``, ``hdfs://``,
``abfs://``) the chief keeps its lines in memory and rewrites the whole ``progress.log`` object with each
line (object stores have no append), and :class:`BackupSync` and :class:`LogSync` publish the
BackupAndRestore state and TensorBoard logs that TensorFlow writes in the node's scratch directory
(``scratch.py``). Imports TensorFlow: only the nodes import this module (``node.py``,
after ``tfenv.prepare_tensorflow``), never the driver.
"""

import os
import time
from collections.abc import Callable

import tensorflow as tf

from . import fs, paths, scratch


def epoch_line(epoch: int, epochs: int, step: int, logs: dict) -> str:
    """The line after epoch ``epoch`` (1-based) of ``epochs``: global ``step`` (continues after a resume),
    train loss and accuracy, eval loss and accuracy (nan when the epoch did not evaluate)."""
    return (f"epoch {epoch}/{epochs} step {step} loss {logs['loss']:.4f} accuracy {logs['accuracy']:.4f} "
            f"eval_loss {logs.get('val_loss', float('nan')):.4f} "
            f"eval_accuracy {logs.get('val_accuracy', float('nan')):.4f}")


def step_line(step: int, logs: dict, examples_per_second: float) -> str:
    """The line every few steps: global ``step``, the batch's loss and accuracy, examples/s so far."""
    return (f"step {step} loss {logs['loss']:.4f} accuracy {logs['accuracy']:.4f} "
            f"examples/s {examples_per_second:.0f}")


class EpochSpans:
    """Training time of each epoch: from its start to the start of its evaluation (seconds)."""

    def __init__(self) -> None:
        self.spans: list[list[float | None]] = []  # [begin, end or None] per epoch

    def epoch_begins(self, now: float) -> None:
        self.spans.append([now, None])

    def evaluation_begins(self, now: float) -> None:
        """The epoch's training ended (evaluation time is not training time)."""
        if self.spans and self.spans[-1][1] is None:
            self.spans[-1][1] = now

    def steady_rate(self, examples_per_epoch: int) -> float | None:
        """Examples/s of the epochs after the first (the first traces and warms up), or of the first when
        it is the only one; epochs whose evaluation never began do not count. None without any."""
        spans = [b - a for a, b in self.spans[1:] if b] or [b - a for a, b in self.spans if b]
        return len(spans) * examples_per_epoch / sum(spans) if spans else None


class StepRate:
    """Examples/s from Keras's batch callbacks, which come once per execution of ``steps_per_execution``
    steps, with ``batch`` the epoch's last step index run (0-based).

    The steady rate counts the steps and seconds between two callbacks of the same epoch after the first
    ``first_steps`` steps (the first execution: tracing, warm-up); the seconds before an epoch's first
    callback (its first execution, after the previous epoch's evaluation) are not counted.
    """

    def __init__(self, step_examples: int, first_steps: int, now: float) -> None:
        self.step_examples, self.first_steps = step_examples, first_steps
        self.t0, self.step = now, 0
        self.steady_steps, self.steady_seconds = 0, 0.0
        self.epoch_steps, self.previous = 0, None

    def epoch_begins(self) -> None:
        self.epoch_steps, self.previous = 0, None

    def batch_ends(self, batch: int, now: float) -> None:
        """Steps ``..batch`` (0-based, within the epoch) ran by ``now``."""
        steps = batch + 1 - self.epoch_steps
        self.epoch_steps, self.step = batch + 1, self.step + steps
        if self.previous is not None and self.step > self.first_steps:
            self.steady_steps += steps
            self.steady_seconds += now - self.previous
        self.previous = now

    def examples_per_second(self, now: float) -> float:
        """Examples/s since training began (warm-up and evaluations included)."""
        return self.step * self.step_examples / max(now - self.t0, 1e-6)

    def steady_rate(self) -> float | None:
        """Steady examples/s (see the class), None before any steady step."""
        return self.steady_steps * self.step_examples / self.steady_seconds if self.steady_steps else None


def log_writer(run_dir: str, is_chief: bool) -> Callable[[str], None]:
    """Appends a line to ``<run_dir>/progress.log`` on the chief; does nothing on the other nodes.

    On a root ``tf.io.gfile`` cannot reach, the lines written so far are kept and the whole file is
    written again with each line (one PUT; the attempt's progress.log starts empty, train.prepare_run_dir).
    """
    path = paths.join(run_dir, paths.PROGRESS_LOG)
    lines: list[str] = []

    def write(line: str) -> None:
        if not is_chief:
            return
        if fs.scheme_of(run_dir).tf_gfile:
            with tf.io.gfile.GFile(path, "a") as f:
                f.write(line + "\n")
        else:
            lines.append(line + "\n")
            fs.write_bytes(path, "".join(lines).encode("utf-8"))
    return write


class BackupSync(tf.keras.callbacks.Callback):
    """BackupAndRestore's state on a root ``tf.io.gfile`` cannot reach, kept in a local directory.

    ``local_backup`` (in this process's scratch directory) is what BackupAndRestore is given; made here
    from ``<remote_backup>/chief``, the chief's checkpoint from which every node restores (tf-keras
    ``WorkerTrainingState``: the other workers write theirs to temporary directories they delete). Placed
    right after BackupAndRestore: on the chief, after every epoch and at the end, ``<remote_backup>/chief``
    is made to match the local one (checkpoint files first, the ``checkpoint`` index last; files the
    checkpoint manager dropped are removed; after a finished fit BackupAndRestore has deleted its state,
    and so is the remote copy), before the epoch's progress line, so a retried task on any executor
    resumes from the last epoch that line reports.
    """

    def __init__(self, remote_backup: str, is_chief: bool):
        super().__init__()
        self.remote, self.is_chief = paths.join(remote_backup, paths.CHIEF_BACKUP), is_chief
        self.local_backup = os.path.join(scratch.scratch_dir(), paths.BACKUP_DIR)
        os.makedirs(self.local_backup, exist_ok=True)
        if fs.exists(self.remote):
            fs.copytree(self.remote, os.path.join(self.local_backup, paths.CHIEF_BACKUP))

    def _publish(self) -> None:
        if self.is_chief:
            scratch.sync(os.path.join(self.local_backup, paths.CHIEF_BACKUP), self.remote, last=("checkpoint",))

    def on_epoch_end(self, epoch, logs=None):
        self._publish()

    def on_train_end(self, logs=None):
        self._publish()


class LogSync(tf.keras.callbacks.Callback):
    """TensorBoard logs on a root ``tf.io.gfile`` cannot reach: TensorBoard writes ``local_logs`` (in the
    scratch directory) and this callback, placed after it, uploads them to ``remote_logs`` after every
    epoch and at the end of training (after TensorBoard closed its writers: the complete logs)."""

    def __init__(self, remote_logs: str):
        super().__init__()
        self.remote = remote_logs
        self.local_logs = os.path.join(scratch.scratch_dir(), paths.TENSORBOARD_DIR)

    def on_epoch_end(self, epoch, logs=None):
        scratch.sync(self.local_logs, self.remote, prune=False)

    def on_train_end(self, logs=None):
        scratch.sync(self.local_logs, self.remote, prune=False)


class EpochProgress(tf.keras.callbacks.Callback):
    """A progress line after each epoch, with eval metrics; the steady rate (``examples_per_second``,
    None until training ended) from the epochs' training time (:class:`EpochSpans`).

    ``write``: where lines go (:func:`log_writer`); ``examples_per_epoch``: steps per epoch x examples per
    step. Under ParameterServerStrategy, which allows no batch-level callbacks, the only progress.
    """

    def __init__(self, write: Callable[[str], None], epochs: int, examples_per_epoch: int):
        super().__init__()
        self.write, self.epochs, self.examples_per_epoch = write, epochs, examples_per_epoch
        self.spans = EpochSpans()
        self.examples_per_second: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.spans.epoch_begins(time.time())

    def on_test_begin(self, logs=None):
        self.spans.evaluation_begins(time.time())

    def on_train_end(self, logs=None):
        if self.examples_per_second is None:
            self.examples_per_second = self.spans.steady_rate(self.examples_per_epoch)

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())  # continues after a resume
        self.write(epoch_line(epoch + 1, self.epochs, step, logs))


class Progress(EpochProgress):
    """Also a line every ``steps_per_execution`` steps (all-reduce training); the steady rate from the
    steps after the first execution, within epochs (evaluation excluded; :class:`StepRate`)."""

    def __init__(self, write: Callable[[str], None], epochs: int, examples_per_epoch: int, step_examples: int,
                 steps_per_execution: int):
        super().__init__(write, epochs, examples_per_epoch)
        self.rate = StepRate(step_examples, steps_per_execution, time.time())

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.rate.epoch_begins()

    def on_train_batch_end(self, batch, logs=None):
        now = time.time()
        self.rate.batch_ends(batch, now)
        global_step = int(self.model.optimizer.iterations.numpy())  # continues after a resume
        self.write(step_line(global_step, logs, self.rate.examples_per_second(now)))

    def on_train_end(self, logs=None):
        self.examples_per_second = self.rate.steady_rate()


class StepCount(tf.keras.callbacks.Callback):
    """The train and evaluation steps this node ran (Keras reports the last step index of each
    execution of ``steps_per_execution`` steps; an input that runs out of data ends the loop early)."""

    def __init__(self):
        super().__init__()
        self.train = self.eval = self._train = self._eval = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._train = 0

    def on_train_batch_end(self, batch, logs=None):
        self._train = batch + 1

    def on_epoch_end(self, epoch, logs=None):
        self.train += self._train

    def on_test_begin(self, logs=None):
        self._eval = 0

    def on_test_batch_end(self, batch, logs=None):
        self._eval = batch + 1

    def on_test_end(self, logs=None):
        self.eval += self._eval
