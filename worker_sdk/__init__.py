"""Parcelo: parcel out huge numeric ranges to workers over gRPC.

The base install is the worker SDK (:class:`Worker`, :class:`Range`,
:class:`Context`, :class:`PermanentError`), the client
(:class:`parcelo.client.Client`) and the admin CLI; the coordinator daemon
lives in :mod:`parcelo.coordinator` (extra ``coordinator``).
"""

from parcelo.context import Context, Range
from parcelo.errors import ConfigError, ParceloError, PermanentError, RpcError
from parcelo.worker import Worker

__all__ = ["ConfigError", "Context", "ParceloError", "PermanentError", "Range", "RpcError", "Worker"]
__version__ = "0.1.0"
