"""`make demo`: a coordinator, two workers and a prime-counting job with a live progress bar.

Everything runs on this machine: the coordinator on a free loopback port (so,
reachable from this host only, it needs neither TLS nor tokens; see
docs/security.md to serve other hosts) over the embedded data dir
``.parcelo/demo``, two ``parcelo-worker`` processes with the example handler
``parcelo.examples:count_primes``, which returns each leaf's count (the dashboard's address
is printed: the job's range map fills in live while it runs). The job
adds them up (``reduce="sum"``) as its range tree collapses; its result, the
number of primes below END, is checked against a direct count, then every
process is stopped with SIGTERM.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from parcelo import JobOptions, result_of
from parcelo.client import Client
from parcelo.examples import primes_in
from parcelo.testing import BIN, CoordinatorProcess, Proc, start_worker

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".parcelo" / "demo"
END = 200_000_000
LEAF = 1_000_000


def main() -> int:
    console = Console()
    if DATA.exists():
        shutil.rmtree(DATA)
    DATA.mkdir(parents=True)
    logs = DATA.parent / "demo-logs"
    logs.mkdir(exist_ok=True)
    console.print(f"[bold]Parcelo demo[/]: coordinator over [cyan]{DATA}[/], logs in [cyan]{logs}[/]")
    coordinator = CoordinatorProcess(DATA, logs, http=True).start()
    console.print(f"coordinator serving on {coordinator.target} (loopback only: no TLS or tokens needed)")
    console.print(f"dashboard: [bold cyan]{coordinator.http_url}/[/] (open it to watch the range fill in)")
    workers: list[Proc] = [
        start_worker(
            coordinator.target, "parcelo.examples:count_primes", logs, "--concurrency", "2", name=f"worker{i}"
        )
        for i in range(2)
    ]
    try:
        with Client(coordinator.target) as client:
            job = client.create_job(JobOptions(0, END, max_range_size=LEAF, reduce="sum"))
            console.print(
                f"job [bold]{job.id}[/]: count the primes in [0, {END:,}), leaves of at most {LEAF:,} "
                f"({END // LEAF} leaves, 2 workers x 2 handlers), counts added up by the job (reduce sum)"
            )
            # The admin CLI's live view: progress bar, throughput, ETA.
            watch = subprocess.run(
                [str(BIN / "parcelo"), "--target", coordinator.target, "job", "watch", job.id]
            )
            final = client.get_job(job.id)
        if watch.returncode != 0:
            console.print(f"[red]job did not complete: {final.reason}[/]")
            return 1
        found = result_of(final)
        console.print(f"the job's result: [bold green]{found:,}[/] primes below {END:,}")
        expected = sum(primes_in(a, min(a + 10_000_000, END)) for a in range(0, END, 10_000_000))
        verdict = "[green]matches[/]" if found == expected else f"[red]differs from {expected:,}[/]"
        console.print(f"checked against a direct count: {verdict}")
        stats = final.stats
        console.print(
            f"{stats.done_nodes} nodes done ({stats.total_nodes} created, collapsed as they finished); "
            f"{stats.failed_attempts} failed attempts"
        )
        return 0 if found == expected else 1
    finally:
        for worker in workers:
            worker.terminate()
        code = coordinator.stop()
        console.print(f"stopped 2 workers and the coordinator (exit {code})")


if __name__ == "__main__":
    sys.exit(main())
