"""The HTTP port (``--http-listen``): health, Prometheus metrics, the JSON API and the dashboard.

One aiohttp application on the coordinator's event loop, under the gRPC port's security: the same
certificate and key (HTTPS; client certificates with ``--tls-client-ca``), the same tokens file
and role table (``Authorization: Bearer TOKEN``; each route names the RPC whose roles it takes).
``/healthz``, ``/readyz`` and the dashboard's static files need no token; the dashboard's script
asks the browser's user for one when the API answers 401.

Routes: ``/healthz`` (alive), ``/readyz`` (serving and able to write), ``/metrics``, the API under
``/api/v1/`` (:mod:`parcelo.coordinator.api`), and the dashboard at ``/``, ``/jobs/{id}``,
``/workers`` and ``/static/``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

from parcelo.coordinator.auth import READERS, ROLES, Role, TokenAuth, bearer
from parcelo.coordinator.errors import StartupError
from parcelo.coordinator.listen import host_of

log = logging.getLogger(__name__)

DASHBOARD = Path(__file__).resolve().parent / "dashboard"
"""The dashboard's files, shipped in the package (no CDN: it works offline)."""

HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""The HTTP status of each gRPC code an answer can carry (anything else: 500)."""

SHUTDOWN_GRACE = 2.0
"""Seconds open HTTP requests get when the coordinator stops (event streams are ended first)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Raised by a route to answer ``{"code": CODE, "message": ...}`` with the code's HTTP status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_response(code: grpc.StatusCode, message: str) -> web.Response:
    """The JSON error answer of ``code``."""
    return web.json_response({"code": code.name, "message": message}, status=HTTP_STATUS.get(code, 500))


@dataclass(frozen=True)
class Route:
    """One route: who may call it is who may call ``rpc`` (its ``ROLES`` entry), or ``allowed``."""

    method: str
    path: str
    handler: Handler
    rpc: str | None = None
    allowed: frozenset[Role] | None = None

    @property
    def roles(self) -> frozenset[Role] | None:
        return ROLES[self.rpc] if self.rpc is not None else self.allowed


class HttpServer:
    """The HTTP port of one coordinator.

    Args:
        routes: The API's routes (and any other that needs the token check).
        auth: The gRPC port's token check (None: no tokens, every route is open).
        ssl_context: HTTPS with the gRPC port's certificate (None: plain HTTP).
        ready: Whether the coordinator serves and its store takes writes (``/readyz``).
        metrics: The Prometheus text (blocking; run in a thread), or None for no ``/metrics``.
        public_metrics: ``/metrics`` needs no token even with ``auth``.
        on_stop: Called first when stopping (ends the API's event streams).
    """

    def __init__(
        self,
        routes: list[Route],
        *,
        auth: TokenAuth | None,
        ssl_context: ssl.SSLContext | None,
        ready: Callable[[], bool],
        metrics: Callable[[], bytes] | None,
        public_metrics: bool = False,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self._auth = auth
        self._ssl = ssl_context
        self._ready = ready
        self._metrics = metrics
        self._on_stop = on_stop
        # Who may call each route, by (method, path pattern).
        self._access: dict[tuple[str, str], frozenset[Role] | None] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        app = web.Application(middlewares=[self._errors, self._check_token], client_max_size=4 << 20)
        self._add(app, Route("GET", "/healthz", self._healthz))
        self._add(app, Route("GET", "/readyz", self._readyz))
        if metrics is not None:
            self._add(
                app,
                Route("GET", "/metrics", self._serve_metrics, allowed=None if public_metrics else READERS),
            )
        for route in routes:
            self._add(app, route)
        for page in ("/", "/jobs/{job_id}", "/workers"):
            self._add(app, Route("GET", page, self._page))
        app.router.add_static("/static", DASHBOARD, append_version=False)
        self._access[("GET", "/static")] = None
        self.app = app

    def _add(self, app: web.Application, route: Route) -> None:
        app.router.add_route(route.method, route.path, route.handler)
        self._access[(route.method, route.path)] = route.roles

    # -- middlewares ----------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Errors of the API as JSON; an unknown path under /api/ too."""
        try:
            return await handler(request)
        except ApiError as err:
            return error_response(err.code, err.message)
        except web.HTTPNotFound:
            if request.path.startswith("/api/"):
                return error_response(grpc.StatusCode.NOT_FOUND, f"no such endpoint: {request.path}")
            raise
        except web.HTTPMethodNotAllowed as err:
            if request.path.startswith("/api/"):
                return web.json_response(
                    {"code": "METHOD_NOT_ALLOWED", "message": f"{request.method} is not allowed here"},
                    status=405,
                    headers={"Allow": ",".join(sorted(err.allowed_methods))},
                )
            raise

    @web.middleware
    async def _check_token(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The role table of the gRPC port, applied to the route's RPC."""
        if self._auth is None:
            return await handler(request)
        route = request.match_info.route
        if route.resource is None:  # no such path: answered 404 (or 405) without a token
            return await handler(request)
        allowed = self._access.get((route.method, route.resource.canonical), READERS)
        if allowed is None:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        token = bearer(header) if header else None
        if token is None:
            raise ApiError(
                grpc.StatusCode.UNAUTHENTICATED, "no token: send the header 'Authorization: Bearer TOKEN'"
            )
        role = self._auth.role_of(token)
        if role is None:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if role not in allowed:
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {role} may not call {route.method} {route.resource.canonical}",
            )
        return await handler(request)

    # -- routes ---------------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "SERVING"})
        return web.json_response({"status": "NOT_SERVING"}, status=503)

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        # Rendering reads the gauges through the loop (Telemetry._read): run it off the loop.
        text = await asyncio.get_running_loop().run_in_executor(None, self._metrics)
        return web.Response(body=text, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _page(self, request: web.Request) -> web.FileResponse:
        # One page for every dashboard view: its script reads the path.
        return web.FileResponse(DASHBOARD / "index.html", headers={"Cache-Control": "no-cache"})

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, listen: str) -> int:
        """Serve on ``listen`` (``HOST:PORT``, port 0: any free port). Returns the bound port.

        Raises:
            StartupError: The address cannot be bound (in use, not this host's); names the flag.
        """
        host = host_of(listen)
        try:
            port = int(listen.rpartition(":")[2])
        except ValueError:
            raise StartupError(f"--http-listen {listen}: expected HOST:PORT or off") from None
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self._ssl, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise StartupError(
                f"--http-listen {listen}: cannot listen ({err.strerror or err}; in use, or not an "
                "address of this host); give another, or off"
            ) from None
        self._runner = runner
        # The bound address: with port 0, the port the system picked.
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """End the event streams, let other requests finish briefly, close the port."""
        self._on_stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
