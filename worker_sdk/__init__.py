"""Parcelo: parcel out huge numeric ranges to workers over gRPC.

The base install is the worker SDK (:class:`Worker`, :class:`Range`,
:class:`Context`, :class:`PermanentError`), the client
(:class:`parcelo.client.Client`, which creates jobs from :class:`JobOptions`)
and the admin CLI; the coordinator daemon lives in :mod:`parcelo.coordinator`
(extra ``coordinator``).
"""

from parcelo.context import Context, Range
from parcelo.errors import ConfigError, ParceloError, PermanentError, RpcError
from parcelo.options import JobOptions, RetryPolicy
from parcelo.worker import Worker

__all__ = [
    "ConfigError",
    "Context",
    "JobOptions",
    "ParceloError",
    "PermanentError",
    "Range",
    "RetryPolicy",
    "RpcError",
    "Worker",
]
__version__ = "0.1.0"
