"""Log output of the three CLIs: text lines, or JSON lines with the ids a log call carries as fields.

``--log-format json`` writes one JSON object per line: ``time`` (ISO 8601, UTC), ``level``,
``logger``, ``message``, and, when the call passed them with ``extra=``, the fields of
:data:`FIELDS` (``job_id``, ``fence``, ``worker_id``, ...); an exception's traceback goes in
``exception``. Log shippers (Loki, Elasticsearch, CloudWatch) index those fields as they are.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

FORMATS = ("text", "json")

FIELDS = ("job_id", "fence", "worker_id", "queue", "fences", "leases")
"""Fields copied from a log record's ``extra`` into its JSON line, when present."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None and value != "":
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr from ``level`` up, as text lines or (``fmt="json"``) JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
