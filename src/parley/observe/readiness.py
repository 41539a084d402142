"""Readiness and the drain trigger over HTTP: ``GET /ready`` for a load balancer or Kubernetes, ``POST /drain``
for ``parley drain`` and a preStop hook.

Owns: whether this process takes new calls (ready until a drain begins; never ready again after), why not,
and the two routes. Must not know how a drain is carried out: ``POST /drain`` only calls ``on_drain``.

``/ready`` answers ``200 {"ready": true, ...}`` while new calls are taken and ``503 {"ready": false, "reason":
"draining", ...}`` from the moment a drain begins (SIGTERM, ``parley drain``), with the calls still up, so a
script can wait for zero; ``503`` with ``"reason": "full"`` while the process is at its ``max_calls`` (ready
again when a call ends). It is not ``/health``: a draining process is healthy (its calls go on), and a process
whose FreeSWITCH is down is not restarted for it by a liveness probe that reads ``/ready``.

``/drain`` takes no body and is answered only for a loopback peer (403 otherwise): the HTTP port may listen on
the pod's address for probes and scrapes, but only something inside the container (or on the box) may drain.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable

from aiohttp import web

from parley.observe.http import HttpServer, error_response, respond


def is_loopback(address: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and IPv4-mapped loopback; anything unparsable is not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class Readiness:
    """Ready until :meth:`begin_drain`; ``active_calls`` is read at request time (the bridge's agents)."""

    def __init__(
        self,
        active_calls: Callable[[], int] = lambda: 0,
        *,
        full: Callable[[], bool] = lambda: False,
        on_drain: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.active_calls = active_calls
        self.full = full  # at capacity (max_calls): not ready until a call ends, then ready again
        self.on_drain = on_drain
        self.reason: str | None = None  # None while ready
        self.since: float | None = None
        self._clock = clock

    @property
    def ready(self) -> bool:
        return self.reason is None and not self.full()

    def begin_drain(self, reason: str = "draining") -> None:
        """Not ready from now on (idempotent: the first reason stays)."""
        if self.reason is None:
            self.reason, self.since = reason, self._clock()

    def report(self) -> dict[str, object]:
        out: dict[str, object] = {"ready": self.ready, "active_calls": self.active_calls()}
        if self.reason is not None and self.since is not None:
            out["reason"] = self.reason
            out["draining_for_s"] = round(max(0.0, self._clock() - self.since), 1)
        elif self.full():
            out["reason"] = "full"
        return out

    def install(self, server: HttpServer) -> None:
        server.route("/ready", self.ready_endpoint)
        server.route("/drain", self.drain_endpoint, methods=("POST",))

    async def ready_endpoint(self, request: web.Request) -> web.Response:
        body = json.dumps(self.report()) + "\n"
        return respond(body, 200 if self.ready else 503, "application/json")

    async def drain_endpoint(self, request: web.Request) -> web.Response:
        if not is_loopback(request.remote or ""):  # the socket's peer: no X-Forwarded-For is believed
            return error_response(403, "drain only from this host")
        if self.on_drain is not None:
            self.on_drain()
        else:
            self.begin_drain()
        return respond(json.dumps(self.report()) + "\n", 202, "application/json")
