"""Worker SDK pieces that need no network: handler loading, the context, reconnect backoff, examples."""

from __future__ import annotations

import random
import subprocess

import pytest

from parcelo import Context, Range
from parcelo.errors import ConfigError
from parcelo.examples import primes_in, should_process
from parcelo.handlers import load, module_should_process
from parcelo.testing import BIN
from parcelo.worker import backoff_delays


def test_load_handler_and_its_should_process() -> None:
    assert load("parcelo.examples:count_primes").__name__ == "count_primes"
    assert module_should_process("parcelo.examples:count_primes") is should_process
    assert module_should_process("tests.handlers:record") is None


@pytest.mark.parametrize(
    "spec", ["nocolon", "no_such_module_xyz:f", "parcelo.examples:missing", "parcelo.examples:"]
)
def test_bad_handler_specs_raise_config_error(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(spec)
    assert spec in str(err.value)


def test_worker_cli_rejects_a_bad_handler_with_one_line() -> None:
    result = subprocess.run(
        [str(BIN / "parcelo-worker"), "--handler", "no_such_module_xyz:f"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().startswith("error: cannot import handler") and "Traceback" not in result.stderr
    )


def test_checkpoint_is_validated_and_shrink_moves_the_end() -> None:
    ctx = Context(job_id="j", params={}, attempt=1, fence=7, leaf=Range(100, 200), cursor=100, details=None)
    ctx.checkpoint(150, b"x")
    assert ctx.last_checkpoint == (150, b"x")
    with pytest.raises(ValueError):
        ctx.checkpoint(99)
    ctx.shrink(180)
    assert ctx.end == 180
    with pytest.raises(ValueError):
        ctx.checkpoint(190)
    ctx.progress("half")
    assert ctx.take_message() == "half" and ctx.take_message() == ""


def test_reconnect_backoff_grows_to_its_cap_with_jitter() -> None:
    delays = backoff_delays(0.1, 5.0, random.Random(1))
    seq = [next(delays) for _ in range(12)]
    assert 0.08 <= seq[0] <= 0.12
    assert all(d <= 5.0 * 1.2 for d in seq) and seq[-1] >= 5.0 * 0.8


def test_example_prime_count_and_pruning_rule() -> None:
    assert primes_in(0, 100) == 25 and primes_in(90, 100) == 1 and primes_in(0, 2) == 0
    assert should_process(Range(0, 1), True) and not should_process(Range(1, 10_000), True)
    assert should_process(Range(9_999, 10_001), False)
