"""The dashboard's HTML: markup that cannot forget to escape, value formatting, and the page shell.

Owns: :class:`Html` (markup this module made) and the only ways to make it, :func:`el`, :func:`join` and
:func:`esc`, which HTML-escape every plain ``str`` and every attribute value they are given; the text
forms of times, durations, milliseconds and dollars; and :class:`WebAssets`, the page template and its
stylesheet, served with a Content-Security-Policy that allows no script at all and only that stylesheet
(by hash), so even a missed escape could not run code. Must not know the pages or the call records: the
pages (:mod:`parley.observe.dashboard`, :mod:`parley.observe.dashboard_costs`) build on it and never
write markup as strings themselves.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from string import Template

from aiohttp import web

from parley.observe.http import respond

# ---- markup that cannot forget to escape ----------------------------------------------------------------


class Html(str):
    """Markup made by :func:`el` / :func:`join` / :func:`esc`. Any plain ``str`` handed to them is escaped."""

    __slots__ = ()


def esc(value: object) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def el(tag: str, *children: object, **attrs: object) -> Html:
    """``<tag attrs>children</tag>``: attribute values and non-Html children are escaped.

    ``class_`` -> ``class``; other underscores become dashes (``text_anchor`` -> ``text-anchor``);
    None / False attributes are left out, True is written bare.
    """
    parts = [tag]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        parts.append(name if value is True else f'{name}="{esc(_num(value) if isinstance(value, float) else value)}"')
    return Html(f"<{' '.join(parts)}>{''.join(esc(c) for c in children)}</{tag}>")


def join(items: Sequence[object]) -> Html:
    return Html("".join(esc(i) for i in items))


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


# ---- formatting ----------------------------------------------------------------------------------------


def fmt_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:,.0f} ms"


def fmt_usd(usd: float | None, places: int = 4) -> str:
    return "-" if usd is None else f"${usd:,.{places}f}"


# ---- the page shell ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebAssets:
    """The page shell and its stylesheet (package data under ``parley/observe/web``)."""

    page: Template
    style: str
    version: str

    @classmethod
    def load(cls) -> WebAssets:
        web = files("parley.observe").joinpath("web")
        try:
            ver = version("parley")
        except PackageNotFoundError:
            ver = "dev"
        return cls(Template(web.joinpath("page.html").read_text("utf-8")),
                   web.joinpath("dashboard.css").read_text("utf-8"), ver)

    @property
    def csp(self) -> str:
        digest = base64.b64encode(hashlib.sha256(self.style.encode("utf-8")).digest()).decode("ascii")
        return (f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'")

    def render(self, title: str, body: Html, status: int = 200) -> web.Response:
        text = self.page.substitute(title=esc(title), style=self.style, body=body, version=esc(self.version))
        return respond(text, status, "text/html; charset=utf-8",
                       headers=(("Content-Security-Policy", self.csp), ("X-Frame-Options", "DENY")))
