"""The FreeSWITCH configuration parley ships, rendered from the user's settings.

Owns: turning :class:`~parley.config.Settings` into the agent's dialplan extension (XML-only and Lua
variants), the Lua helper, a hardened ``event_socket.conf.xml``, the ESL access list, the global
variables and an install README; choosing or generating the ESL password and the stream token secret;
refusing values that are unsafe or that FreeSWITCH would mangle. Must not know the ESL wire protocol or
anything about a call. The token formula used here must stay the one in
:mod:`parley.freeswitch.stream_token`: md5 hex of ``<secret>:<uuid>``.

:func:`render_files` is pure (settings and secrets in, file texts out); :func:`render_config` adds the
secret generation and the writing. Templates are package data in ``conf/`` with ``@@{name}``
placeholders, because ``${...}`` and ``$${...}`` belong to FreeSWITCH.

Several FreeSWITCH nodes: the files are rendered for one node (``node``, default the only one): its ESL
address, port and password go into ``event_socket.conf.xml``, and the stream's first text frame (the
mod_audio_stream metadata, in both dialplans and on parley's own restarts) is ``{"node":"<name>"}`` so that
parley controls the call through that node's ESL. The metadata is compact JSON without spaces, quotes or
backslashes beyond its own double quotes, so the argument splitter and the dialplan expansion leave it intact
(code reading of ``switch_separate_string`` and the nested-brace count of the variable expansion).

One deliberate shape: the dialplan reads the secret from the global variable ``parley_stream_secret``
(set in ``vars.parley.xml``) rather than carrying it inline in ``${md5(<secret>:${uuid})}``.
mod_dialplan_xml logs every action's data *before* expansion at DEBUG level, which the vanilla log file
records, so an inline secret would reach ``freeswitch.log`` on every call. After expansion only the
per-call token is visible.

No rendered file may contain ``1234`` or ``ClueCon`` (the FreeSWITCH defaults that scanners flag):
generated secrets are redrawn, and configured values that would produce them are refused.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from xml.sax.saxutils import escape

from parley.config import AudioStreamSettings, Settings, node_password_env, require_esl_password
from parley.errors import ConfigError, ParleyError
from parley.freeswitch.stream_token import create_secret_file, read_secret_file

ESL_PASSWORD_ENV = "PARLEY_ESL_PASSWORD"
STREAM_SECRET_ENV = "PARLEY_STREAM_TOKEN_SECRET"
STREAM_SECRET_VAR = "parley_stream_secret"  # FreeSWITCH global variable holding the token secret
ESL_ACL_NAME = "parley_esl"
FORBIDDEN_SUBSTRINGS = ("1234", "ClueCon")
MIN_SECRET_CHARS = 16
SECRET_FILE_MODE = 0o640
PUBLIC_FILE_MODE = 0o644
ENV_FILE = "parley.env"
README_FILE = "README.parley-freeswitch.txt"

# Letters, digits and . _ + / = - : base64, base64url and hex all fit, and none of them is special to
# FreeSWITCH's variable expansion ($ { } ( )), its argument splitter (space ' \), XML or a shell.
_SECRET_RE = re.compile(r"[A-Za-z0-9._+/=-]+")
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # dialplan context / dialplan type names
_DEST_RE = re.compile(r"[A-Za-z0-9+._@*#-]+")  # a transfer destination
# mod_audio_stream's validate_ws_uri: ws/wss, host of letters, digits, '-' and '.', numeric port.
# The path must survive the argument splitter and dialplan expansion, and the UUID is appended to it.
_WS_URL_RE = re.compile(r"(wss?)://([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?(/[A-Za-z0-9._~%/-]*)?")


@dataclass(frozen=True, slots=True)
class RenderedFile:
    """One output file: where it goes under the output directory, its text and its mode."""

    relpath: str
    text: str = field(repr=False)
    mode: int = PUBLIC_FILE_MODE


@dataclass(frozen=True, slots=True)
class RenderResult:
    """What :func:`render_config` wrote and which secrets it used. ``repr`` never shows a secret."""

    out_dir: Path
    paths: tuple[Path, ...]
    esl_password: str = field(repr=False)
    esl_password_generated: bool
    stream_secret: str = field(repr=False)
    stream_secret_generated: bool
    warnings: tuple[str, ...] = ()
    secret_file: Path | None = None  # where parley serve finds the stream secret (None: it was configured)
    esl_password_env: str = ESL_PASSWORD_ENV  # PARLEY_ESL_PASSWORD_<NAME> when rendered for one of freeswitch.nodes

    @property
    def env_file(self) -> Path:
        return self.out_dir / ENV_FILE

    @property
    def env(self) -> dict[str, str]:
        """The environment parley needs to match these files (contains secrets)."""
        return {self.esl_password_env: self.esl_password, STREAM_SECRET_ENV: self.stream_secret}

    def summary(self) -> str:
        """A human summary for the CLI, without any secret value."""
        lines = [f"Wrote {len(self.paths)} files to {self.out_dir}:"]
        lines += [f"  {p.relative_to(self.out_dir)}" for p in self.paths]
        how = "generated a new random" if self.esl_password_generated else "used the configured"
        lines.append(f"{how} ESL password: parley needs it as {self.esl_password_env}")
        if self.secret_file is None:
            lines.append(f"used the configured stream token secret: parley needs it as {STREAM_SECRET_ENV}")
        else:
            how = "generated a new random" if self.stream_secret_generated else "reused the"
            lines.append(f"{how} stream token secret in {self.secret_file} (mode 600): `parley serve` run by "
                         "this user with this config reads it from there, nothing to set")
        lines.append(f"Both are in {self.env_file} (mode 600), e.g. for a systemd EnvironmentFile=.")
        lines.append(f"Install the files as {README_FILE} describes.")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


class _Template(string.Template):
    delimiter = "@@"


def _template(name: str) -> _Template:
    source = resources.files("parley.freeswitch") / "conf" / f"{name}.in"
    return _Template(source.read_text(encoding="utf-8"))


def generate_secret(token: Callable[[int], str] = secrets.token_urlsafe, nbytes: int = 32) -> str:
    """A random secret (43 URL-safe characters by default) without the substrings scanners flag."""
    for _ in range(1000):
        value = token(nbytes)
        if len(value) >= 32 and _SECRET_RE.fullmatch(value) and not _has_default(value):
            return value
    raise ParleyError("the secret generator keeps returning unusable values")


def render_config(
    settings: Settings, out_dir: Path, *, esl_password: str | None = None, stream_secret: str | None = None,
    node: str | None = None,
) -> RenderResult:
    """Write parley's FreeSWITCH configuration under ``out_dir``.

    Secrets: the argument, else the configured value, else a generated one. A configured ESL password
    that is a well-known default, short, or made of characters FreeSWITCH would mangle is refused
    with :class:`ConfigError`. Nothing is written unless every file renders. ``node``: the FreeSWITCH node
    the files are for (its ESL settings; the stream metadata names it); default the only node.
    """
    esl = settings.freeswitch.node(node).esl
    password_env = _password_env(settings, node)
    if esl_password or esl.password:  # refuses the well-known defaults with parley's usual message
        require_esl_password(replace(esl, password=esl_password or esl.password))
    password, password_generated = _choose(esl_password or esl.password, "ESL password", password_env)
    stream = settings.freeswitch.audio_stream
    configured_secret = stream_secret or stream.token_secret
    secret_file: Path | None = None
    if configured_secret:
        secret, secret_generated = _choose(configured_secret, "stream token secret", STREAM_SECRET_ENV)
    else:  # the secret file `parley serve` reads too: created once, then reused by every render
        secret_file = stream.secret_file
        stored = read_secret_file(secret_file)
        secret_generated = stored is None
        secret = stored if stored is not None else generate_secret()
        _check_secret(secret, "stream token secret", STREAM_SECRET_ENV)
    files, warnings = render_files(settings, esl_password=password, stream_secret=secret, node=node)
    if secret_file is not None and secret_generated:
        stored = create_secret_file(secret_file, secret)
        if stored != secret:  # another render stored one first: FreeSWITCH and parley must share that one
            secret, secret_generated = stored, False
            files, warnings = render_files(settings, esl_password=password, stream_secret=secret, node=node)
    out_dir = Path(out_dir)
    paths = tuple(_write(out_dir, f) for f in files)
    return RenderResult(out_dir, paths, password, password_generated, secret, secret_generated, tuple(warnings),
                        secret_file, password_env)


def _password_env(settings: Settings, node: str | None) -> str:
    """Where parley reads the ESL password: PARLEY_ESL_PASSWORD, or a listed node's PARLEY_ESL_PASSWORD_<NAME>."""
    return node_password_env(settings.freeswitch.node(node).name) if settings.freeswitch.nodes else ESL_PASSWORD_ENV


def render_files(
    settings: Settings, *, esl_password: str, stream_secret: str, node: str | None = None
) -> tuple[list[RenderedFile], list[str]]:
    """Every output file's text, plus warnings for the user. Pure: no I/O besides reading templates."""
    password_env = _password_env(settings, node)
    _check_secret(esl_password, "ESL password", password_env)
    _check_secret(stream_secret, "stream token secret", STREAM_SECRET_ENV)
    fs = settings.freeswitch
    esl = fs.node(node).esl
    node_name = fs.node(node).name
    metadata = '{"node":"' + node_name + '"}'  # NODE_NAME: letters, digits, '-', '_' only
    dp = fs.dialplan
    warnings: list[str] = []
    context = _name(dp.context, "freeswitch.dialplan.context")
    extension = _plain(dp.extension_name, "freeswitch.dialplan.extension_name")
    pattern = _plain(dp.destination_pattern, "freeswitch.dialplan.destination_pattern")
    url = _stream_url(fs.audio_stream, warnings)
    mix, rate, heartbeat = _stream_params(fs.audio_stream, warnings)
    if not 0 < esl.port < 65536:
        raise ConfigError(f"freeswitch.esl.port: {esl.port} is not a TCP port")
    listen_ip = _esl_listen_ip(esl.host, esl.port, warnings)
    networks = _acl_networks(fs.esl_allowed_cidrs, listen_ip, warnings)
    fb_dest, fb_dialplan, fb_context = _fallback(dp.fallback_extension, context)
    common = {
        "context": context,
        "acl_name": ESL_ACL_NAME,
        "secret_var": STREAM_SECRET_VAR,
        "listen_ip": listen_ip,
        "port": str(esl.port),
    }

    # FreeSWITCH expands ${uuid} and the global ${parley_stream_secret} inside the md5 API's argument.
    headers = '{"Authorization":"Bearer ${md5(${' + STREAM_SECRET_VAR + '}:${uuid})}"}'
    start = f"${{uuid_audio_stream(${{uuid}} start {url}/${{uuid}} {mix} {rate} {metadata})}}"
    record = ""
    if dp.record_sessions:
        record = "\n      ".join(
            [
                "<!-- QA recording: caller left, agent right -->",
                '<action application="set" data="RECORD_STEREO=true"/>',
                f'<action application="record_session" data="{_attr(_RECORDING_PATH)}"/>',
            ]
        )
    dialplan_dir = f"dialplan/{context}"
    xml_values = {
        "extension_name": _attr(extension),
        "destination_pattern": _attr(pattern),
        "heartbeat_s": str(heartbeat),
        "extra_headers": _attr(headers),
        "stream_start": _attr(start),
        "record_actions": record,
    }
    lua_values = {
        "dial_url": _lua(url),
        "mix": _lua(mix),
        "rate": _lua(rate),
        "node": _lua(node_name),
        "heartbeat_s": _lua(str(heartbeat)),
        "record_sessions": "true" if dp.record_sessions else "false",
        "fallback_dest": _lua(fb_dest),
        "fallback_dialplan": _lua(fb_dialplan),
        "fallback_context": _lua(fb_context),
        "secret_var": _lua(STREAM_SECRET_VAR),
    }
    nodes = "\n  ".join(f'<node type="allow" cidr="{_attr(str(n))}"/>' for n in networks)
    readme_values = {
        **common,
        "acl_cidrs": ", ".join(str(n) for n in networks),
        "destination_pattern": pattern,
        "dial_url": url,
        "extension_name": extension,
        "node": node_name,
        "esl_password_env": password_env,
    }
    files = [
        RenderedFile(f"{dialplan_dir}/00_parley_agent.xml", _fill("dialplan_agent.xml", xml_values)),
        RenderedFile(f"{dialplan_dir}/00_parley_agent_lua.xml", _fill("dialplan_agent_lua.xml", xml_values)),
        RenderedFile("scripts/parley_agent.lua", _fill("parley_agent.lua", lua_values)),
        RenderedFile(
            "autoload_configs/event_socket.conf.xml",
            _fill("event_socket.conf.xml", {**common, "password": _attr(esl_password)}),
            SECRET_FILE_MODE,
        ),
        RenderedFile(
            "autoload_configs/acl.conf.parley.xml", _fill("acl.conf.parley.xml", {**common, "nodes": nodes})
        ),
        RenderedFile(
            "vars.parley.xml",
            _fill("vars.parley.xml", {**common, "stream_secret": _attr(stream_secret)}),
            SECRET_FILE_MODE,
        ),
        RenderedFile(README_FILE, _fill(README_FILE, readme_values)),
        RenderedFile(ENV_FILE, _fill(ENV_FILE, {"esl_password": esl_password, "stream_secret": stream_secret,
                                                "esl_password_env": password_env}), 0o600),
    ]
    flagged = [(f.relpath, bad) for f in files for bad in FORBIDDEN_SUBSTRINGS if bad in f.text]
    if flagged:
        raise ConfigError(
            f"{flagged[0][0]} would contain {flagged[0][1]!r}, a FreeSWITCH default that scanners flag. It comes "
            "from a configured value (port, CIDR, URL, extension, pattern or fallback): change that value"
        )
    return files, warnings


_RECORDING_PATH = "${recordings_dir}/parley/${strftime(%Y-%m-%d)}/${uuid}.wav"


def _fill(name: str, values: dict[str, str]) -> str:
    text = _template(name).substitute(values)
    # An optional block rendered empty leaves an indented blank line: drop those, keep real blank lines.
    return "\n".join(line for line in text.split("\n") if line == "" or line.strip()) + (
        "" if text.endswith("\n") else "\n"
    )


def _write(out_dir: Path, f: RenderedFile) -> Path:
    path = out_dir / f.relpath
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        parts = Path(f.relpath).parent.parts
        for depth in range(len(parts) + 1):  # out_dir and each subdirectory: 0750
            out_dir.joinpath(*parts[:depth]).mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f.mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write(f.text)
        os.chmod(tmp, f.mode)  # exact mode, whatever the umask or an older file had
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def _has_default(value: str) -> bool:
    return "1234" in value or "cluecon" in value.lower()


def _check_secret(value: str, what: str, env: str) -> str:
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"the {what} is too short ({len(value)} characters; at least {MIN_SECRET_CHARS}). "
            f"Leave {env} unset and `parley freeswitch config` generates a random one"
        )
    if not _SECRET_RE.fullmatch(value):
        raise ConfigError(
            f"the {what} may only contain letters, digits and . _ + / = - : FreeSWITCH expands $ {{ }} "
            "( ) in configuration and dialplan data, and its argument splitter rewrites spaces, quotes "
            f"and backslashes. Leave {env} unset to get a generated one"
        )
    if _has_default(value):
        raise ConfigError(f"the {what} contains a FreeSWITCH default ('1234' or 'ClueCon'): use a random one")
    return value


def _choose(configured: str, what: str, env: str) -> tuple[str, bool]:
    """The configured secret after checks, else a generated one; and whether it was generated."""
    if configured:
        return _check_secret(configured, what, env), False
    return generate_secret(), True


def _attr(value: str) -> str:
    """Escape for a double-quoted XML attribute."""
    return escape(value, {'"': "&quot;"})


def _lua(value: str) -> str:
    """A Lua string literal. Values are validated before; escaping is belt and braces."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain(value: str, where: str) -> str:
    if not value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ConfigError(f"{where}: must be non-empty, without control characters or newlines")
    return value


def _name(value: str, where: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ConfigError(f"{where}: {value!r} must be letters, digits, '_', '.' or '-' (it names a directory)")
    return value


def _fallback(value: str, context: str) -> tuple[str, str, str]:
    """``fallback_extension`` as the transfer app reads it: ``<destination> [<dialplan> [<context>]]``."""
    parts = value.split()
    if not parts:
        return "", "XML", context
    if len(parts) > 3 or not _DEST_RE.fullmatch(parts[0]):
        raise ConfigError(
            f"freeswitch.dialplan.fallback_extension: {value!r} is not '<destination> [<dialplan> [<context>]]'"
        )
    dialplan = _name(parts[1], "freeswitch.dialplan.fallback_extension") if len(parts) > 1 else "XML"
    ctx = _name(parts[2], "freeswitch.dialplan.fallback_extension") if len(parts) > 2 else context
    return parts[0], dialplan, ctx


def _stream_url(stream: AudioStreamSettings, warnings: list[str]) -> str:
    url = stream.dial_url
    m = _WS_URL_RE.fullmatch(url)
    if m is None or (m.group(3) is not None and not 0 < int(m.group(3)) < 65536):
        raise ConfigError(
            f"freeswitch.audio_stream: FreeSWITCH would dial {url!r}, which mod_audio_stream rejects or "
            "which would not survive its argument splitting. Need ws:// or wss://, a host of letters, "
            "digits, '-' and '.' (no IPv6 literal, no '_': set public_url), an optional port, and a path "
            "of letters, digits and . _ ~ % / - (no query string)"
        )
    scheme, host = m.group(1), m.group(2)
    loopback = host == "localhost" or host.startswith("127.")
    if host == "0.0.0.0":
        warnings.append(f"FreeSWITCH will dial {url}: set freeswitch.audio_stream.public_url to a real address")
    if scheme == "wss":
        warnings.append("wss:// needs mod_audio_stream built with -DUSE_TLS=ON (default builds have no TLS)")
    elif not loopback:
        warnings.append(
            f"{url} is not loopback: caller audio and per-call tokens cross the network in clear text; "
            "use wss:// (mod_audio_stream built with -DUSE_TLS=ON) or a tunnel"
        )
    return url


def _stream_params(stream: AudioStreamSettings, warnings: list[str]) -> tuple[str, str, int]:
    if stream.mix not in ("mono", "mixed", "stereo"):
        raise ConfigError(f"freeswitch.audio_stream.mix: {stream.mix!r} is not mono, mixed or stereo")
    if stream.mix != "mono":
        warnings.append(
            f"mix {stream.mix!r}: mod_audio_stream sends no audio while the call is parked and idle; "
            "parley is built for 'mono'"
        )
    if stream.sample_rate <= 0 or stream.sample_rate % 8000:
        raise ConfigError(f"freeswitch.audio_stream.sample_rate: {stream.sample_rate} is not a multiple of 8000")
    rate = {8000: "8k", 16000: "16k"}.get(stream.sample_rate, str(stream.sample_rate))
    if stream.heartbeat_s < 0:
        raise ConfigError("freeswitch.audio_stream.heartbeat_s must be 0 (no pings) or more")
    return stream.mix, rate, stream.heartbeat_s


def _esl_listen_ip(host: str, port: int, warnings: list[str]) -> str:
    """Where mod_event_socket listens: the address parley dials if it is a concrete IP, else loopback."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        warnings.append(
            f"freeswitch.esl.host {host!r} is not an IP address, so ESL listens on 127.0.0.1; if parley "
            "connects from another host, set listen-ip in event_socket.conf.xml to a private address"
        )
        return "127.0.0.1"
    if ip.is_unspecified:
        warnings.append(
            f"ESL listens on every interface ({ip}) because freeswitch.esl.host says so: only the "
            f"{ESL_ACL_NAME} ACL and your firewall keep port {port} private"
        )
    return str(ip)


def _acl_networks(
    cidrs: Sequence[str], listen_ip: str, warnings: list[str]
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise ConfigError(
                f"freeswitch.esl_allowed_cidrs: {cidr!r} is not an IP network (e.g. 10.0.0.5/32)"
            ) from None
        if net.prefixlen == 0:
            raise ConfigError(
                f"freeswitch.esl_allowed_cidrs: {cidr!r} admits every address; list only parley's hosts"
            )
        if net not in networks:
            networks.append(net)
    if not networks:
        raise ConfigError(
            f"freeswitch.esl_allowed_cidrs is empty: the {ESL_ACL_NAME} ACL would deny every ESL client"
        )
    ip = ipaddress.ip_address(listen_ip)
    if ip.is_loopback and not any(ip in net for net in networks):
        warnings.append(
            f"ESL listens on {ip} but freeswitch.esl_allowed_cidrs does not include it: "
            "parley connecting over loopback would be denied"
        )
    return networks
