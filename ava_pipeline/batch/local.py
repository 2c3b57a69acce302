"""Local engine: worker processes on this machine, each holding the models once, fed by the driver.

::

    driver ──(Pipe: up to 2 tasks per worker, longest video first)──► worker 1 .. N (processes) 
       ▲                                                                │ DetectionWork.open() once,
       └──────────────(Pipe: "ready" fingerprint, VideoOutcome)─────────┘ then one video at a time

Workers are forked from a fork server that has imported torch but never used it (a process that ran torch
must not fork; ``spawn`` where there is no fork server), so starting a worker costs a fork, not seconds of
imports. Each worker keeps its next video queued and reads that file ahead while the current one runs, so
it never waits for the driver, which writes every output and the manifest. A worker that dies (segfault
in a decoder, out of memory, killed) is replaced; the video it was running is retried up to
``max_attempts`` times, the one queued behind it is handed out again without counting an attempt.
"""
from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from typing import Iterator, Optional, Sequence

from ..errors import AvaPipelineError
from .work import DetectionWork, VideoOutcome, VideoTask, read_ahead

TASKS_PER_WORKER = 2
"""Tasks handed to a worker at once: the one it runs and the next one it reads ahead."""


PRELOADED_MODULES = ["torch", "torchvision", "av", "ava_pipeline.batch.work"]
"""Imported once by the fork server, so that starting or replacing a worker costs a fork, not an import."""


def worker_context():
    """A multiprocessing context whose children never inherit a used torch: ``forkserver`` (workers forked
    from a clean server process that only imported :data:`PRELOADED_MODULES`) where the platform has it,
    else ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED_MODULES)
    return context


@dataclasses.dataclass(frozen=True)
class Dispatched:
    """Event: ``task`` was handed to a worker."""

    task: VideoTask


class WorkerSetupError(AvaPipelineError):
    """A worker could not build its models; the batch cannot run."""


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """End this worker when the driver is gone (killed), so no orphan keeps computing."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="ava-parent-watch", daemon=True).start()


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (to reach the driver), else its text in a WorkerSetupError."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return WorkerSetupError(f"{type(exc).__name__}: {exc}")


def _worker_main(conn, work: DetectionWork, device: Optional[str], threads: int) -> None:
    """Body of a worker process: open the work, then answer tasks until ``None`` or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver stops us
    _exit_with_parent()
    try:
        processor = work.open(device=device, threads=threads)
    except BaseException as exc:  # reported to the driver, which stops the batch with this error
        conn.send(("setup_failed", _picklable(exc)))
        return
    conn.send(("ready", processor.fingerprint))
    queued: collections.deque = collections.deque()
    try:
        while True:
            while not queued or conn.poll():
                queued.append(conn.recv())
            task = queued.popleft()
            if task is None:
                return
            if queued and queued[0] is not None:
                read_ahead(queued[0].path)
            conn.send(("outcome", processor(task)))
    except (EOFError, BrokenPipeError):
        return  # the driver went away


@dataclasses.dataclass(eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    device: Optional[str]
    tasks: collections.deque = dataclasses.field(default_factory=collections.deque)
    ready: bool = False


class LocalEngine:
    """Runs tasks on ``len(devices)`` worker processes; ``devices[i]`` is worker i's torch device (None: the
    settings' device) and ``threads`` its torch intra-op thread count."""

    def __init__(self, work: DetectionWork, *, devices: Sequence[Optional[str]], threads: int,
                 max_attempts: int = 3):
        self.work = work
        self.devices = list(devices)
        self.threads = threads
        self.max_attempts = max_attempts
        self._context = worker_context()
        self._started = 0

    def describe(self) -> str:
        return f"local engine: {self._started} worker process(es), {self.threads} torch thread(s) each"

    def _spawn(self, device: Optional[str], index: int) -> _Worker:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child_end, self.work, device, self.threads),
                                        name=f"ava-worker-{index}", daemon=True)
        process.start()
        child_end.close()
        return _Worker(process, parent_end, device)

    def run(self, tasks: Sequence[VideoTask]) -> Iterator[Dispatched | VideoOutcome]:
        """Yield a :class:`Dispatched` when a task is handed out and a :class:`VideoOutcome` when it ends,
        for every task, in completion order. Raises :class:`WorkerSetupError` (or the worker's own error)
        when a worker cannot load its models."""
        pending = collections.deque(tasks)
        workers = [self._spawn(device, i) for i, device in enumerate(self.devices[:len(tasks)])]
        self._started = len(workers)
        finished_normally = False
        try:
            while pending or any(w.tasks for w in workers):
                for worker in workers:
                    while pending and len(worker.tasks) < TASKS_PER_WORKER:
                        task = pending.popleft()
                        worker.conn.send(task)
                        worker.tasks.append(task)
                        yield Dispatched(task)
                by_conn = {w.conn: w for w in workers}
                by_sentinel = {w.process.sentinel: w for w in workers}
                ready = multiprocessing.connection.wait(list(by_conn) + list(by_sentinel))
                dead = []
                for obj in ready:
                    if obj in by_conn:
                        worker = by_conn[obj]
                        try:
                            yield from self._receive(worker)
                        except (EOFError, OSError):  # the worker died while sending
                            dead.append(worker)
                    else:
                        dead.append(by_sentinel[obj])
                for worker in dict.fromkeys(dead):
                    yield from self._drain(worker)
                    yield from self._requeue(worker, pending)
                    workers.remove(worker)
                    if pending:
                        workers.append(self._spawn(worker.device, len(workers)))
            finished_normally = True
        finally:
            self._stop(workers, gracefully=finished_normally)

    def _receive(self, worker: _Worker) -> Iterator[VideoOutcome]:
        kind, payload = worker.conn.recv()
        if kind == "ready":
            worker.ready = True
        elif kind == "setup_failed":
            raise payload
        else:
            worker.tasks.popleft()
            yield payload

    def _drain(self, worker: _Worker) -> Iterator[VideoOutcome]:
        """Outcomes a dead worker sent before it died."""
        try:
            while worker.conn.poll():
                yield from self._receive(worker)
        except (EOFError, OSError):
            pass  # nothing more was sent
        worker.process.join(timeout=5)

    def _requeue(self, worker: _Worker, pending: collections.deque) -> list[VideoOutcome]:
        """Hand a dead worker's tasks out again; the one it was running counts an attempt."""
        code = worker.process.exitcode
        if not worker.ready:
            raise WorkerSetupError(f"worker process {worker.process.pid} died while loading the models (exit code "
                                   f"{code}); check memory and the device ({worker.device or 'from settings'})")
        failures = []
        if not worker.tasks:
            return failures
        running, *queued = worker.tasks
        for task in reversed(queued):
            pending.appendleft(task)
        if running.attempt >= self.max_attempts:
            failures.append(VideoOutcome(
                task=running, error=f"{running.path}: the worker process died (exit code {code}) on each of "
                f"{running.attempt} attempts at this video; check it with ava-detect on this file alone",
                error_type="WorkerDied", worker=f"pid {worker.process.pid}", started=time.time(),
                finished=time.time()))
        else:
            pending.appendleft(dataclasses.replace(running, attempt=running.attempt + 1))
        worker.tasks.clear()
        return failures

    @staticmethod
    def _stop(workers: list[_Worker], gracefully: bool) -> None:
        for worker in workers:
            if gracefully and worker.process.is_alive():
                try:
                    worker.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass  # already gone
            elif worker.process.is_alive():
                worker.process.kill()
        for worker in workers:
            worker.process.join(timeout=10 if gracefully else 5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
