"""The FreeSWITCH nodes parley controls calls through: one ESL client per configured node, by name.

Owns: building an :class:`~parley.freeswitch.esl_client.EslClient` per node of ``freeswitch.nodes`` (or the
single ``default`` node of ``freeswitch.esl``), starting and closing them together, and what they say as a
whole and one by one: ``connected`` (every node), ``stats`` (the node worth looking at, for the one-link view
of ``/health`` and ``/metrics``), :meth:`EslNodes.health` (per node: connected, or what is wrong) and
:meth:`EslNodes.wait_fatal` (every node refused us for good). Must not know what a call is: the bridge asks
for a node's client by the name a stream or an event brought.

A node that is down leaves the others alone: its client keeps reconnecting in the background, and only the
calls of that node wait (as a single-node parley does while its ESL is down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType

from parley.config import (
    DEFAULT_NODE,
    EslNodeSettings,
    FreeSwitchSettings,
    require_node_passwords,
    validate_nodes,
)
from parley.errors import ConfigError, EslConnectError
from parley.freeswitch.esl_client import EslClient, EslStats

log = logging.getLogger("parley.esl")


class EslNodes:
    """Name -> :class:`EslClient`, in configuration order. ``connected``/``stats`` make it an ``EslLike``."""

    def __init__(self, clients: Mapping[str, EslClient], *, clock: Callable[[], float] = time.monotonic) -> None:
        if not clients:
            raise ConfigError("no FreeSWITCH node configured")
        self._clients = dict(clients)
        self._clock = clock

    @classmethod
    def from_settings(cls, nodes: Sequence[EslNodeSettings], *, filter_calls: bool = False) -> EslNodes:
        """One client per node; ConfigError naming the node (and its password variable) when one is unusable."""
        validate_nodes(tuple(nodes))
        if len(nodes) > 1 or (nodes and nodes[0].name != DEFAULT_NODE):
            require_node_passwords(FreeSwitchSettings(nodes=tuple(nodes)))  # the error names the node
        return cls({node.name: EslClient(node.esl, filter_calls=filter_calls) for node in nodes})

    @classmethod
    def single(cls, client: EslClient, name: str = "default") -> EslNodes:
        return cls({name: client})

    # ---- lookup -------------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._clients)

    @property
    def clients(self) -> Mapping[str, EslClient]:
        return MappingProxyType(self._clients)

    @property
    def default(self) -> str | None:
        """The node a stream that names none belongs to: the only node, else None (it must say)."""
        return next(iter(self._clients)) if len(self._clients) == 1 else None

    @property
    def first(self) -> EslClient:
        return next(iter(self._clients.values()))

    def get(self, name: str) -> EslClient | None:
        return self._clients.get(name)

    def __getitem__(self, name: str) -> EslClient:
        return self._clients[name]

    def __contains__(self, name: object) -> bool:
        return name in self._clients

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def items(self) -> Iterator[tuple[str, EslClient]]:
        return iter(self._clients.items())

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect every node; a wrong password or ACL raises at once, a node that is not up yet is retried
        in the background (logged), as for a single node."""
        for name, client in self._clients.items():
            try:
                await client.start(wait=True)
            except EslConnectError as exc:
                log.warning("FreeSWITCH node %s: %s; will keep retrying", name, exc)
                await client.start(wait=False)
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    async def wait_fatal(self) -> BaseException:
        """The error once every node has refused us for good (wrong password, ACL); with one node, its error."""
        while True:
            errors = await asyncio.gather(*(c.wait_fatal() for c in self._clients.values()))
            if all(not c.connected for c in self._clients.values()):
                if len(errors) == 1:
                    return errors[0]
                return type(errors[0])("; ".join(f"node {n}: {e}" for n, e in zip(self._clients, errors, strict=True)))
            await asyncio.sleep(1.0)  # one came back meanwhile: wait for the next round

    # ---- state --------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while every node's ESL is up."""
        return all(c.connected for c in self._clients.values())

    @property
    def stats(self) -> EslStats:
        """One node's stats for a one-link view: the first node not connected (else the first that ever
        failed, else the first), its ``last_error`` prefixed with the node's name when there are several."""
        items = list(self._clients.items())
        pick = next(((n, c) for n, c in items if not c.connected), None)
        pick = pick or next(((n, c) for n, c in items if c.stats.last_error is not None), None) or items[0]
        name, client = pick
        st = client.stats
        if len(items) == 1 or st.last_error is None:
            return st
        return replace(st, last_error=f"node {name}: {st.last_error}")

    def health(self) -> dict[str, dict[str, object]]:
        """Per node: ``{"status": "ok" | "failing", "state", "for_s", "host", "port", "last_error",
        "last_error_s_ago", "failed_attempts", "reconnects", "owned_calls"}``."""
        now = self._clock()
        out: dict[str, dict[str, object]] = {}
        for name, client in self._clients.items():
            st = client.stats
            out[name] = {
                "status": "ok" if client.connected else "failing",
                "state": st.state,
                "for_s": None if st.state_since is None else round(max(0.0, now - st.state_since), 1),
                "host": client.host,
                "port": client.port,
                "last_error": st.last_error,
                "last_error_s_ago": None if st.last_error_at is None else round(max(0.0, now - st.last_error_at), 1),
                "failed_attempts": st.attempts,
                "reconnects": st.reconnects,
            }
            if client.filter_calls:
                out[name]["owned_calls"] = len(client.owned_calls)
        return out
