"""Folder mode spread over a Ray cluster: one long-lived engine per worker (a Ray actor).

Each actor compiles the model once and runs ``cases.run_case`` on the cases it is handed, so the
outputs, skip-and-resume and per-case failures are exactly those of ``segment_folder``. Nothing
but case paths and small results travel through Ray: the model, inputs and outputs must be on a
filesystem that the caller and every worker see under the same paths.

Ray is an optional extra (``veloxseg[cluster]``) and is imported only inside functions, so the
runtime package imports without it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from veloxseg.runtime.cases import (
    Case,
    CaseStatus,
    FolderReport,
    check_folder_run,
    run_case,
)
from veloxseg.runtime.engine import BackendName, Engine, PrecisionName, check_format
from veloxseg.runtime.errors import VeloxSegError, one_line
from veloxseg.runtime.model_file import open_model_file
from veloxseg.runtime.output_files import create_output_folder
from veloxseg.runtime.segment import CaseResult, SegmentOptions

__all__ = ["DEFAULT_THREADS", "SHARED_FS", "CaseWorker", "plan_workers", "segment_folder_ray"]

DEFAULT_THREADS = 1
"""Threads per worker when neither threads nor workers are given: one engine per core gave the
most cases per minute (benchmarks/results/ray_bench.md), as this small model scales better
across processes than across threads. Fewer workers with more threads need less memory."""

SHARED_FS = "the model, inputs and outputs must be on a filesystem shared by all workers"

_QUEUED_PER_WORKER = 2  # one case running and one waiting, so a worker never idles on dispatch
# A worker killed mid-case (e.g. out of memory) comes back with its engine; each case it held
# is tried once more, so a case that kills workers fails alone and the cohort goes on.
_RESTARTS = 4
_RETRIES = 1
_CONNECT_TIMEOUT_S = 5  # a live Ray head answers at once; ray.init itself would retry for minutes

Outcome = tuple[CaseStatus, CaseResult | str | None]


def plan_workers(
    node_cpus: Sequence[float], threads: int | None, workers: int | None
) -> tuple[int, int]:
    """(workers, threads per worker) that fit on the nodes' cores without oversubscribing them.

    A worker's threads must fit on one node; given only ``workers``, each gets as many threads
    as still lets all of them fit; given neither, ``DEFAULT_THREADS`` and as many as fit.
    """
    nodes = [int(c) for c in node_cpus if c >= 1]
    if not nodes:
        raise VeloxSegError("the Ray cluster has no CPUs to run workers on")
    if (threads is not None and threads < 1) or (workers is not None and workers < 1):
        raise VeloxSegError(f"threads and workers must be at least 1, got {threads}, {workers}")

    def capacity(t: int) -> int:
        return sum(c // t for c in nodes)

    if threads is None:
        wanted = 1 if workers is None else workers
        fits = [t for t in range(1, max(nodes) + 1) if capacity(t) >= wanted]
        if workers is None:
            fits = [t for t in fits if t <= DEFAULT_THREADS]
        threads = max(fits, default=1)
    if capacity(threads) < 1:
        raise VeloxSegError(
            f"{threads} threads per worker do not fit on any node (CPUs per node: {nodes}); "
            f"ask for at most {max(nodes)}"
        )
    workers = capacity(threads) if workers is None else workers
    if capacity(threads) < workers:
        raise VeloxSegError(
            f"{workers} workers x {threads} threads do not fit on the cluster's cores "
            f"(CPUs per node: {nodes}); ask for fewer workers or threads"
        )
    return workers, threads


class CaseWorker:
    """One engine on one worker process, kept for the whole cohort (run as a Ray actor)."""

    def __init__(
        self, model_path: Path, backend: BackendName, precision: PrecisionName, threads: int
    ) -> None:
        self.host = socket.gethostname()
        self.engine: Engine | None = None
        self.error: str | None = None
        if not os.access(model_path, os.R_OK):
            self.error = f"worker on host {self.host} cannot read {model_path}: {SHARED_FS}"
            return
        try:
            self.engine = Engine.open_for_volumes(model_path, backend, precision, threads)
        except (VeloxSegError, ValueError, OSError, RuntimeError) as e:
            self.error = f"worker on host {self.host} cannot open the model: {one_line(e)}"

    def ready(self) -> str | None:
        """Why the engine could not be opened (naming this host), or None."""
        return self.error

    def engine_format(self) -> tuple[str, str]:
        """The (backend, precision) that ``auto`` resolved to here."""
        assert self.engine is not None, "engine_format() on a worker whose engine failed to open"
        return self.engine.backend_name, self.engine.precision

    def run(
        self, case: Case, output_dir: Path, options: SegmentOptions, overwrite: bool
    ) -> Outcome:
        """``run_case`` here, after checking that this host sees the case's files."""
        assert self.engine is not None, "run() on a worker whose engine failed to open"
        unreadable = next((p for p in case.files if not os.access(p, os.R_OK)), None)
        if unreadable is not None:
            return "failed", f"worker on host {self.host} cannot read {unreadable}: {SHARED_FS}"
        if not os.access(output_dir, os.W_OK | os.X_OK):
            return "failed", f"worker on host {self.host} cannot write {output_dir}: {SHARED_FS}"
        return run_case(self.engine, case, output_dir, options, overwrite=overwrite)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise VeloxSegError("Ray is not installed: pip install 'veloxseg[cluster]'") from e
    return ray


def _check_reachable(address: str | None) -> None:
    """Fail in seconds when nobody answers at ``HEAD:PORT``; ``ray.init`` retries for minutes."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise VeloxSegError(
            f"Ray address must be HEAD:PORT (e.g. 10.0.0.5:6379) or auto, got {address!r}"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S) as sock:
            answers = _speaks_http2(sock)
    except OSError as e:
        raise VeloxSegError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}); check the address, "
            "or leave out --ray-address to start a local cluster"
        ) from e
    if not answers:
        raise VeloxSegError(
            f"{address} answers, but not as a Ray cluster does (another service on that port?); "
            "pass the head's GCS port, 6379 unless `ray start --head --port` set another"
        )


# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, Ray Client)
# answers with a SETTINGS frame at once; a web server or the Ray dashboard's HTTP/1 does not.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4


def _speaks_http2(sock: socket.socket) -> bool:
    """Whether the peer answers as gRPC does: ``ray.init`` to any other listener retries for
    minutes (2 min 45 s seen against a web server) before it fails."""
    sock.sendall(_HTTP2_HELLO)
    head = b""
    try:
        while len(head) < 9 and (chunk := sock.recv(9 - len(head))):
            head += chunk
    except TimeoutError:
        return False
    return len(head) == 9 and head[3] == _HTTP2_SETTINGS


def segment_folder_ray(
    model_path: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    options: SegmentOptions | None = None,
    *,
    backend: BackendName = "auto",
    precision: PrecisionName = "auto",
    threads: int | None = None,
    workers: int | None = None,
    address: str | None = None,
    overwrite: bool = False,
    on_case: Callable[[str, str], None] | None = None,
) -> FolderReport:
    """``segment_folder`` with the cases spread over Ray workers, one engine per worker.

    Uses the Ray already initialised in this process if any, else connects to ``address``
    (``"auto"``, ``"HEAD:6379"``), else starts a local cluster for the call. ``on_case(case_id,
    status)`` is called as cases finish; the report lists cases in folder order. ``auto``
    backend or precision is resolved by the first worker and then used by all, so one cohort is
    segmented in one format.
    """
    ray = _import_ray()
    model_path, input_dir, output_dir = (
        Path(p).absolute() for p in (model_path, input_dir, output_dir)
    )
    check_format(backend, precision)
    n_modalities = open_model_file(model_path).card.in_channels
    if not ray.is_initialized():
        _check_reachable(address)
    cases = check_folder_run(input_dir, output_dir, n_modalities)  # the folder: once it can run
    options = replace(options or SegmentOptions(), progress=False)

    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise VeloxSegError(f"cannot reach the Ray cluster at {address}: {one_line(e)}") from e
    actors: list[Any] = []
    try:
        node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]]
        n_workers, n_threads = plan_workers(node_cpus, threads, workers)
        create_output_folder(output_dir)
        worker_class = ray.remote(CaseWorker).options(
            num_cpus=n_threads, max_restarts=_RESTARTS, max_task_retries=_RETRIES
        )
        actors = [worker_class.remote(model_path, backend, precision, n_threads)]
        if "auto" in (backend, precision):  # resolved once, by the first worker, for the cohort
            error = ray.get(actors[0].ready.remote())
            if error:
                raise VeloxSegError(error)
            backend, precision = ray.get(actors[0].engine_format.remote())
        actors += [
            worker_class.remote(model_path, backend, precision, n_threads)
            for _ in range(n_workers - 1)
        ]
        outcomes = _dispatch(actors, deque(cases), output_dir, options, overwrite, on_case)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
    report = FolderReport()
    for case in cases:
        report.record(case.case_id, *outcomes[case.case_id])
    return report


def _dispatch(
    actors: list[Any],
    pending: deque[Case],
    output_dir: Path,
    options: SegmentOptions,
    overwrite: bool,
    on_case: Callable[[str, str], None] | None,
) -> dict[str, Outcome]:
    """Feed cases to workers as they come up and free up; every case gets an outcome.

    A worker whose engine cannot open is dropped; if none ever opens, its reason is raised as
    one line. A worker that dies twice on a case fails it, and is asked again whether it is up.
    """
    import ray
    from ray.exceptions import RayActorError, RayError

    starting = {actor.ready.remote(): actor for actor in actors}
    running: dict[Any, tuple[Case, Any]] = {}
    outcomes: dict[str, Outcome] = {}
    ever_ready = False
    reason = "no Ray worker could start"

    def submit(actor: Any) -> None:
        if pending:
            case = pending.popleft()
            running[actor.run.remote(case, output_dir, options, overwrite)] = (case, actor)

    while running or (pending and starting):
        [ref], _ = ray.wait([*starting, *running], num_returns=1)
        if ref in starting:
            actor = starting.pop(ref)
            try:
                error = ray.get(ref)
            except RayError as e:
                error = f"a Ray worker died while starting: {one_line(e)}"
            if error:
                reason = error
                continue
            ever_ready = True
            for _ in range(_QUEUED_PER_WORKER):
                submit(actor)
            continue
        case, actor = running.pop(ref)
        try:
            outcome: Outcome = ray.get(ref)
        except RayActorError as e:
            outcome = ("failed", f"the Ray worker died on this case: {one_line(e)}")
            if actor not in starting.values():
                starting[actor.ready.remote()] = actor
        except RayError as e:  # an unexpected error in run(): this case fails, the worker goes on
            cause = getattr(e, "cause", None) or e
            outcome = ("failed", f"{type(cause).__name__}: {one_line(cause)}")
        if actor not in starting.values():  # a restarting worker is fed once it is up again
            submit(actor)
        outcomes[case.case_id] = outcome
        if on_case:
            on_case(case.case_id, outcome[0])
    if pending and not ever_ready:
        raise VeloxSegError(reason)
    for case in pending:
        outcomes[case.case_id] = ("failed", f"no Ray worker left: {reason}")
        if on_case:
            on_case(case.case_id, "failed")
    return outcomes
