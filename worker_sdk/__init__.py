"""Parcelo: parcel out huge numeric ranges to workers over gRPC.

The base install is the worker SDK (:class:`Worker`, :class:`Range`,
:class:`Context`, :class:`PermanentError`), the client
(:class:`parcelo.client.Client`, which creates jobs from :class:`JobOptions`)
and the admin CLI; the coordinator daemon lives in :mod:`parcelo.coordinator`
(extra ``coordinator``).
"""

from importlib.metadata import version

from parcelo.client import result_of
from parcelo.context import Context, Range
from parcelo.errors import ConfigError, JobNotCompleted, ParceloError, PermanentError, RpcError
from parcelo.options import JobOptions, RetryPolicy
from parcelo.worker import Worker

__all__ = [
    "ConfigError",
    "Context",
    "JobNotCompleted",
    "JobOptions",
    "ParceloError",
    "PermanentError",
    "Range",
    "RetryPolicy",
    "RpcError",
    "Worker",
    "result_of",
]
# The version is written once, in pyproject.toml; the installed package's metadata carries it.
__version__ = version("parcelo")
