"""Ray engine: the same per-video work on the actors of a Ray cluster, outcomes streamed to the driver.

::

    driver (writes outputs + manifest) ──process.remote(task), up to 2 per actor──► VideoActor × N
          ▲                                                                          │ DetectionWork.open()
          └───────────────── ray.wait: the first finished VideoOutcome ──────────────┘ once per actor

Actors: one per GPU (``num_gpus=1``) when the device is CUDA; on CPU one per node holding all its CPUs, or
``workers`` actors sharing the cluster's CPUs; each sets torch's threads to the CPUs it holds. An actor that
dies (node lost, process killed, out of memory) is replaced, and the video it was running is retried up to
``max_attempts`` times; a video that fails for its own reason comes back as a failed outcome, once.
"""
from __future__ import annotations

import collections
import dataclasses
import socket
import time
from typing import Iterator, Optional, Sequence

from ..errors import ConfigError, DependencyMissingError
from .local import TASKS_PER_WORKER, Dispatched
from .work import DetectionWork, VideoOutcome, VideoTask, error_line

INSTALL_HINT = "pip install 'ava-pipeline[ray]'"


def import_ray():
    """The ``ray`` module, or :class:`DependencyMissingError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise DependencyMissingError(f"--engine ray needs Ray, which is not installed ({exc}); install it with "
                                     f"{INSTALL_HINT}, or use --engine local") from exc
    return ray


class VideoActor:
    """Holds the opened work (models loaded once) in a Ray actor process; see :class:`DetectionWork`."""

    def __init__(self, work: DetectionWork, device: Optional[str], threads: int):
        self._processor = None
        self._setup_error: Optional[BaseException] = None
        try:
            self._processor = work.open(device=device, threads=threads)
        except Exception as exc:  # returned by ready() so the driver can stop the batch with it
            self._setup_error = exc

    def ready(self):
        """``("ready", fingerprint)`` or ``("setup_failed", error)``."""
        if self._setup_error is not None:
            return "setup_failed", self._setup_error
        return "ready", self._processor.fingerprint

    def process(self, task: VideoTask) -> VideoOutcome:
        return self._processor(task)


@dataclasses.dataclass(frozen=True)
class _ActorSpec:
    """Resources of one actor: logical CPUs and GPUs it reserves, torch threads, preferred node."""

    num_cpus: float
    num_gpus: float
    threads: int
    node_id: Optional[str] = None


def plan_actors(ray, *, on_gpu: bool, workers: Optional[int]) -> list[_ActorSpec]:
    """Actor specs for the connected cluster (see module docstring)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total_cpus = int(sum(n["Resources"].get("CPU", 0) for n in nodes))
    total_gpus = int(sum(n["Resources"].get("GPU", 0) for n in nodes))
    if on_gpu:
        if total_gpus == 0:
            raise ConfigError("the device is CUDA but the Ray cluster has no GPU; start the Ray nodes on GPU "
                              "machines or run with --device cpu")
        count = workers or total_gpus
        return [_ActorSpec(num_cpus=1, num_gpus=1, threads=max(1, total_cpus // count))] * count
    if workers is not None:
        share = max(1, total_cpus // workers)
        return [_ActorSpec(num_cpus=share, num_gpus=0, threads=share)] * workers
    specs = [_ActorSpec(num_cpus=int(n["Resources"]["CPU"]), num_gpus=0, threads=int(n["Resources"]["CPU"]),
                        node_id=n["NodeID"]) for n in nodes if n["Resources"].get("CPU", 0) >= 1]
    if not specs:
        raise ConfigError("the Ray cluster has no node with a CPU to run videos on; check `ray status`")
    return specs


def _check_reachable(address: Optional[str], timeout_s: float = 10.0) -> None:
    """ConfigError when ``address`` (``host:port`` or ``ray://host:port``) refuses a TCP connection; Ray itself
    would retry for minutes. Other forms (None, ``auto``) are left to Ray."""
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc.strerror or exc}); check that `ray "
                          "start --head` ran there (`ray status`) and the port is open, or leave out --ray-address "
                          "to start a local Ray") from None


class RayEngine:
    """Runs tasks on Ray actors; connects to ``address`` (None: the Ray this process already joined, else
    a new local one with this machine's CPUs), and disconnects at the end if it connected."""

    def __init__(self, work: DetectionWork, *, address: Optional[str], on_gpu: bool, workers: Optional[int],
                 max_attempts: int = 3, log_to_driver: bool = True):
        self.ray = import_ray()
        self.work = work
        self.address = address
        self.on_gpu = on_gpu
        self.workers = workers
        self.max_attempts = max_attempts
        self.log_to_driver = log_to_driver
        self._specs: list[_ActorSpec] = []

    def describe(self) -> str:
        cpus, gpus = sum(s.num_cpus for s in self._specs), sum(s.num_gpus for s in self._specs)
        return f"ray engine: {len(self._specs)} actor(s), {cpus:g} CPU(s), {gpus:g} GPU(s)"

    def _new_actor(self, spec: _ActorSpec):
        options = {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus, "max_restarts": 0}
        if spec.node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(spec.node_id, soft=True)
        device = "cuda" if self.on_gpu else None  # Ray makes the actor's GPU the only visible one
        return self._actor_class.options(**options).remote(self.work, device, spec.threads)

    def run(self, tasks: Sequence[VideoTask]) -> Iterator[Dispatched | VideoOutcome]:
        """Yield a :class:`Dispatched` per task handed out and a :class:`VideoOutcome` per task finished."""
        ray = self.ray
        connected_here = not ray.is_initialized()
        if connected_here:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, log_to_driver=self.log_to_driver, include_dashboard=False,
                         configure_logging=False)
            except (ConnectionError, ValueError) as exc:
                raise ConfigError(f"cannot connect to the Ray cluster at {self.address!r} ({exc}); check that "
                                  "`ray start` ran there (`ray status`), or leave out --ray-address to start "
                                  "a local Ray") from exc
        try:
            self._specs = plan_actors(ray, on_gpu=self.on_gpu, workers=self.workers)[:len(tasks)]
            self._actor_class = ray.remote(VideoActor)
            yield from self._run(tasks)
        finally:
            if connected_here:
                ray.shutdown()

    def _run(self, tasks: Sequence[VideoTask]) -> Iterator[Dispatched | VideoOutcome]:
        ray = self.ray
        from ray.exceptions import (ActorUnavailableError, ObjectLostError, RayActorError, RayTaskError,
                                    WorkerCrashedError)

        lost = (RayActorError, ActorUnavailableError, WorkerCrashedError, ObjectLostError)
        pending = collections.deque(tasks)
        slots = {}  # actor -> (spec, deque of (ref, task)) in submission order
        readiness = {}
        for spec in self._specs:
            actor = self._new_actor(spec)
            slots[actor] = (spec, collections.deque())
            readiness[actor.ready.remote()] = actor
        in_flight: dict = {}  # ref -> (actor, task)
        try:
            while pending or in_flight:
                for actor, (spec, queue) in list(slots.items()):
                    while pending and len(queue) < TASKS_PER_WORKER:
                        task = pending.popleft()
                        ref = actor.process.remote(task)
                        queue.append((ref, task))
                        in_flight[ref] = (actor, task)
                        yield Dispatched(task)
                done, _ = ray.wait(list(in_flight) + list(readiness), num_returns=1)
                ref = done[0]
                if ref in readiness:
                    actor = readiness.pop(ref)
                    try:
                        kind, payload = ray.get(ref)
                    except lost:
                        continue  # the actor died while loading; its tasks fail below and are retried
                    if kind == "setup_failed":
                        raise payload
                    continue
                actor, task = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except lost as exc:
                    yield from self._actor_lost(actor, exc, slots, in_flight, pending, readiness)
                    continue
                except RayTaskError as exc:  # e.g. the outcome could not be sent back: the video's own failure
                    outcome = VideoOutcome(task=task, error=error_line(task.path, exc.as_instanceof_cause()),
                                           error_type=type(exc.cause).__name__, started=time.time(),
                                           finished=time.time())
                slots[actor][1].popleft()
                yield outcome
        finally:
            for actor in slots:
                ray.kill(actor)

    def _actor_lost(self, actor, exc: BaseException, slots: dict, in_flight: dict, pending: collections.deque,
                    readiness: dict) -> Iterator[VideoOutcome]:
        """Replace a dead actor; the video it was running is retried (or failed after ``max_attempts``), the
        ones queued behind it are handed out again without counting an attempt."""
        spec, queue = slots.pop(actor)
        for ref, _ in queue:
            in_flight.pop(ref, None)
        self.ray.kill(actor)
        replacement = self._new_actor(spec)
        slots[replacement] = (spec, collections.deque())
        readiness[replacement.ready.remote()] = replacement
        (_, running), *queued = queue
        for _, task in reversed(queued):
            pending.appendleft(task)
        if running.attempt < self.max_attempts:
            pending.appendleft(dataclasses.replace(running, attempt=running.attempt + 1))
            return
        message = " ".join(str(exc).split())[:300]
        yield VideoOutcome(task=running, error=f"{running.path}: the Ray worker died on each of {running.attempt} "
                           f"attempts at this video (last: {type(exc).__name__}: {message}); check it with "
                           "ava-detect on this file alone", error_type="WorkerDied", started=time.time(),
                           finished=time.time())
