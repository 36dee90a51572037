"""Testing aid: run a real coordinator and real workers as processes on loopback ports.

Used by Parcelo's own tests and benchmarks, and by users who want to test a
handler against the real protocol::

    from parcelo import JobOptions
    from parcelo.testing import CoordinatorProcess, start_worker

    coord = CoordinatorProcess(tmp_path / "data", tmp_path).start()
    job = coord.create_job(JobOptions(0, 10_000, max_range_size=100))
    worker = start_worker(coord.target, "mymodule:handler", tmp_path)
    coord.wait_status(job.id, {parcelo.v1.types_pb2.JOB_STATUS_COMPLETED})
    worker.terminate(); coord.stop()

Every process starts in its own process group; ``kill9`` kills the group.
The coordinator needs the ``coordinator`` extra installed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TypeVar

import grpc

from parcelo.channel import TLS, Metadata, open_channel, token_metadata
from parcelo.options import JobOptions
from parcelo.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2, worker_pb2_grpc

BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    """A port nobody listens on right now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the life of the process
        self.popen = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole process group and reap it."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()
        return int(self.popen.returncode)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


class CoordinatorProcess:
    """A real ``parcelo-coordinator`` process on a loopback port over a data dir.

    Args:
        data_dir: Its data dir.
        log_dir: Where its log file goes.
        port: The port to serve on (default: a free one).
        extra: More ``parcelo-coordinator`` flags (``--auth-tokens F``, ``--tls-cert F``, ...).
        listen: ``--listen`` (default ``127.0.0.1:PORT``); :attr:`target` stays on loopback.
        tls: How :attr:`channel` connects, for a coordinator started with ``--tls-cert``.
        token: The token :meth:`create_job`, :meth:`get_job` and the readiness check send
            (:attr:`metadata`); calls on the stubs pass ``metadata=coord.metadata`` themselves.
        http: Serve the HTTP port (dashboard, API, metrics) on a free loopback port
            (:attr:`http_url`); off by default, which saves the coordinator a fraction of a second
            at start. ``--http-listen`` in ``extra`` takes precedence.
        env: More environment variables for the process (``OTEL_TRACES_EXPORTER=console``, ...).
    """

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path,
        port: int | None = None,
        extra: Sequence[str] = (),
        *,
        listen: str | None = None,
        tls: TLS | None = None,
        token: str | None = None,
        http: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.port = port or free_port()
        self.extra = list(extra)
        self.listen = listen or self.target
        self.tls = tls
        self.metadata: Metadata = token_metadata(token)
        self.proc: Proc | None = None
        self._channel: grpc.Channel | None = None
        self.starts = 0
        self.env = dict(env or {})
        self.http_port = free_port() if http else 0
        if "--http-listen" not in self.extra:
            self.extra += ["--http-listen", f"127.0.0.1:{self.http_port}" if http else "off"]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the HTTP port (made with ``http=True``)."""
        scheme = "https" if "--tls-cert" in self.extra else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def start(self) -> CoordinatorProcess:
        self.starts += 1
        self.proc = Proc(
            [
                str(BIN / "parcelo-coordinator"),
                "--data-dir",
                str(self.data_dir),
                "--listen",
                self.listen,
                *self.extra,
            ],
            self.log_dir / f"coordinator-{self.port}-{self.starts}.log",
            env=self.env,
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise AssertionError(f"coordinator exited:\n{self.proc.output()}")
            try:
                self.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), timeout=1, metadata=self.metadata)
                return True
            except grpc.RpcError as err:
                # Any answer but "not there" means it serves (a worker's token may not list jobs).
                return err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

        wait_for(ready, timeout, "the coordinator to serve")

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            # Short reconnect backoff: the tests restart coordinators and should see them at once.
            self._channel = open_channel(
                self.target,
                self.tls.credentials() if self.tls is not None else None,
                options=[("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 250)],
            )
        return self._channel

    @property
    def jobs(self) -> jobs_pb2_grpc.JobServiceStub:
        return jobs_pb2_grpc.JobServiceStub(self.channel)

    @property
    def workers(self) -> worker_pb2_grpc.WorkerServiceStub:
        return worker_pb2_grpc.WorkerServiceStub(self.channel)

    def create_job(self, options: JobOptions) -> types_pb2.Job:
        """Create a job over the raw stub, so a refusal surfaces as the ``grpc.RpcError`` itself."""
        request = jobs_pb2.CreateJobRequest(spec=options.to_proto())
        job: types_pb2.Job = self.jobs.CreateJob(request, timeout=10, metadata=self.metadata)
        return job

    def get_job(self, job_id: str) -> types_pb2.Job:
        job: types_pb2.Job = self.jobs.GetJob(
            jobs_pb2.GetJobRequest(job_id=job_id), timeout=10, metadata=self.metadata
        )
        return job

    def wait_status(self, job_id: str, statuses: Collection[int], timeout: float = 60) -> types_pb2.Job:
        def check() -> types_pb2.Job | None:
            job = self.get_job(job_id)
            return job if job.status in statuses else None

        job = wait_for(check, timeout, f"job {job_id} to reach {statuses}", interval=0.05)
        assert job is not None
        return job

    def online_backup(self, timeout: float = 20) -> Path:
        """Ask for an online backup (SIGUSR1); its folder, once the coordinator logs it complete.

        Waits for the log line rather than for files: RocksDB builds a checkpoint in a
        temporary folder and renames it when done. Needs the default INFO log level.
        """
        proc = self.proc
        assert proc is not None
        marker = "backup written to "
        before = proc.output().count(marker)
        os.kill(proc.pid, signal.SIGUSR1)

        def written() -> str:
            lines = [line for line in proc.output().splitlines() if marker in line]
            return lines[-1] if len(lines) > before else ""

        line = wait_for(written, timeout, "the online backup")
        return Path(line.split(marker, 1)[1].strip())

    def kill9(self) -> None:
        self._close_channel()
        if self.proc is not None:
            self.proc.kill9()

    def stop(self) -> int:
        self._close_channel()
        return self.proc.terminate() if self.proc is not None else 0

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def start_worker(
    target: str,
    handler: str,
    log_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    name: str = "worker",
) -> Proc:
    """A real ``parcelo-worker`` process."""
    log = log_dir / f"{name}-{time.monotonic_ns()}.log"
    return Proc(
        [str(BIN / "parcelo-worker"), "--target", target, "--handler", handler, *args],
        log,
        env={"PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]), **(env or {})},
    )
