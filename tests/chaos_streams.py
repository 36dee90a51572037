"""A stream-holder process for `make chaos`'s load phase (tests/chaos.py): many raw Work streams at once.

Each stream asks for one lease at a time, holds it a random while (as if running it), completes
it and asks for the next. Every grant (with its latency: from asking to being granted) and every
answer is a line of the log, written as it happens, so a holder killed with kill -9 leaves its
story behind::

    grant FENCE START END LATENCY_MS UNIX_TIME STREAM
    ack FENCE 1|0

``python -m tests.chaos_streams --target HOST:PORT --streams N --name NAME --log FILE``; it prints
``ready`` once every stream is welcomed. SIGUSR1: complete at once from then on (to finish the job
quickly). SIGTERM: half-close every stream, read what is left, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import time
from typing import IO

from grpc import aio

from parcelo.v1 import worker_pb2, worker_pb2_grpc


class Holder:
    """The streams of one process and what they share: the log, the mode, the stop signal."""

    def __init__(self, log: IO[str], hold: tuple[float, float], rng: random.Random) -> None:
        self.log = log
        self.hold = hold
        self.rng = rng
        self.fast = asyncio.Event()
        self.stopping = asyncio.Event()
        self.welcomed = 0

    async def stream(self, stub: worker_pb2_grpc.WorkerServiceStub, name: str) -> None:
        call = stub.Work()
        writing = asyncio.Lock()  # grpc.aio allows one write at a time per call
        asked = time.time()
        holding: set[asyncio.Task[None]] = set()
        closed = False

        async def write(msg: worker_pb2.WorkRequest) -> None:
            async with writing:
                if not closed:
                    await call.write(msg)

        async def run(lease: worker_pb2.Lease) -> None:
            nonlocal asked
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.fast.wait(), self.rng.uniform(*self.hold))
            await write(worker_pb2.WorkRequest(complete=worker_pb2.CompleteRequest(fences=[lease.fence])))
            asked = time.time()
            await write(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=1)))

        async def stop() -> None:
            nonlocal closed
            await self.stopping.wait()
            async with writing:
                closed = True
                await call.done_writing()

        await write(worker_pb2.WorkRequest(hello=worker_pb2.Hello(worker_id=name)))
        welcome = await call.read()
        assert welcome is not aio.EOF and welcome.WhichOneof("msg") == "welcome"
        self.welcomed += 1
        closer = asyncio.create_task(stop())
        await write(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=1)))
        while (msg := await call.read()) is not aio.EOF:
            assert isinstance(msg, worker_pb2.WorkResponse)
            kind = msg.WhichOneof("msg")
            if kind == "grant":
                now = time.time()
                for lease in msg.grant.leases:
                    self.log.write(
                        f"grant {lease.fence} {lease.start} {lease.end} {(now - asked) * 1e3:.3f} {now:.6f} {name}\n"
                    )
                    task = asyncio.create_task(run(lease))
                    holding.add(task)
                    task.add_done_callback(holding.discard)
            elif kind == "complete":
                for fence in msg.complete.accepted:
                    self.log.write(f"ack {fence} 1\n")
                for rejected in msg.complete.rejected:
                    self.log.write(f"ack {rejected.fence} 0\n")
        closer.cancel()


async def main(args: argparse.Namespace, log: IO[str]) -> None:
    holder = Holder(log, (args.hold[0], args.hold[1]), random.Random(args.seed))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, holder.fast.set)
    loop.add_signal_handler(signal.SIGTERM, holder.stopping.set)
    async with aio.insecure_channel(args.target) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        streams = [asyncio.create_task(holder.stream(stub, f"{args.name}/{i}")) for i in range(args.streams)]
        while holder.welcomed < args.streams:
            done = [task for task in streams if task.done()]
            if done:
                await done[0]  # a stream that ended before its welcome: raise why
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await asyncio.gather(*streams)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.chaos_streams")
    parser.add_argument("--target", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--hold", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    with open(arguments.log, "a", buffering=1) as lines:  # line-buffered: each line written at once
        asyncio.run(main(arguments, lines))
