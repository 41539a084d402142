"""Typed settings for parley, and the one place that reads YAML files and environment variables.

Owns: the shape of the configuration, its defaults, validation with clear messages, and secrets taken
from the environment. Must not know how any setting is used. Everything below is a frozen dataclass;
``load_settings`` builds them from a YAML mapping plus ``PARLEY_*`` environment variables.

Secrets never need to be in the file: ``PARLEY_ESL_PASSWORD`` and ``PARLEY_STREAM_TOKEN_SECRET`` override
it. The FreeSWITCH default ESL password ``ClueCon`` is refused outright: ESL is shell access.

FreeSWITCH nodes: ``freeswitch.nodes`` lists them (``{name, esl: {host, port, password}}``); a node's password
may come from ``PARLEY_ESL_PASSWORD_<NAME>`` (the name upper-cased, ``-`` as ``_``). With no nodes listed (the
default) there is one node, ``default``, made of ``freeswitch.esl`` and the ``PARLEY_ESL_*`` variables:
:meth:`FreeSwitchSettings.esl_nodes` gives the list either way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from parley.errors import ConfigError

PlaybackMode = Literal["sendmsg", "broadcast", "remote"]
MixType = Literal["mono", "mixed", "stereo"]

FORBIDDEN_PASSWORDS = frozenset({"cluecon", "1234", "password", ""})


@dataclass(frozen=True, slots=True)
class EslSettings:
    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default="", repr=False)
    connect_timeout_s: float = 5.0
    api_timeout_s: float = 10.0
    bgapi_timeout_s: float = 30.0
    reconnect_initial_s: float = 0.25
    reconnect_max_s: float = 8.0
    event_format: Literal["json", "plain"] = "json"


NODE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a FreeSWITCH node's name (config, stream metadata, health)
DEFAULT_NODE = "default"  # the one node made of freeswitch.esl when no nodes are listed


def node_password_env(name: str) -> str:
    """The environment variable holding a node's ESL password: ``PARLEY_ESL_PASSWORD_FS_B`` for ``fs-b``."""
    return "PARLEY_ESL_PASSWORD_" + name.upper().replace("-", "_")


@dataclass(frozen=True, slots=True)
class EslNodeSettings:
    """One FreeSWITCH node parley controls calls through: its name (the stream metadata names it) and ESL."""

    name: str = DEFAULT_NODE
    esl: EslSettings = field(default_factory=EslSettings)


@dataclass(frozen=True, slots=True)
class AudioStreamSettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8765
    path: str = "/call"  # the call UUID is appended: /call/<uuid>
    public_url: str = ""  # what FreeSWITCH dials; default ws://<listen_host>:<listen_port>
    sample_rate: int = 16000
    mix: MixType = "mono"
    heartbeat_s: int = 15
    token_secret: str = field(default="", repr=False)  # the per-call token secret (PARLEY_STREAM_TOKEN_SECRET)
    # Where `parley freeswitch config` stores the secret it generates (mode 600) and `parley serve` reads it
    # when token_secret is empty; empty: default_token_secret_file(). Both commands then agree by themselves.
    token_secret_file: str = ""
    # `parley serve` refuses to start without a token secret unless this is true (any local process that
    # knows a call's UUID could then replace or end the call's audio stream). Logged loudly at start.
    allow_unauthenticated_streams: bool = False
    queue_frames: int = 50  # inbound frames buffered per call (50 x 20 ms = 1 s); oldest dropped beyond
    unidentified_timeout_s: float = 3.0  # how long a connection may stay unbound to a call
    # Streams with no call UUID in the path or metadata (e.g. a hand-written dialplan) are paired with a
    # call by its mod_audio_stream::connect event, only when exactly one of each is waiting.
    allow_anonymous: bool = True
    # A lost or replaced stream is restarted over ESL while the call lives: up to restart_attempts in a row
    # (waits restart_backoff_s, doubling), at most max_restarts per call; then the apology and the fallback.
    restart_attempts: int = 3
    restart_backoff_s: float = 0.25
    max_restarts: int = 10
    # Capacity: the stream of a new call that would make more than this many calls up in this process is
    # refused (503 + Retry-After; mod_audio_stream error 6, so the dialplan's Lua helper sends the call to the
    # fallback extension: another worker or a person) and /ready says "full" until a call ends, so every call
    # taken keeps real-time audio rather than all of them degrading together. A live call's restarted stream
    # is always taken, and a new call counts from the moment its stream is let in. 0: no limit.
    max_calls: int = 0
    # A mono stream that sends no frame for this long while its connection stays open is restarted (0: never).
    # mixed/stereo streams are silent by design while nothing plays, so they are never judged stalled.
    stall_timeout_s: float = 2.0

    @property
    def secret_file(self) -> Path:
        return Path(self.token_secret_file).expanduser() if self.token_secret_file else default_token_secret_file()

    @property
    def dial_url(self) -> str:
        base = self.public_url or f"ws://{self.listen_host}:{self.listen_port}"
        return base.rstrip("/") + "/" + self.path.strip("/")


@dataclass(frozen=True, slots=True)
class PlaybackSettings:
    mode: PlaybackMode = "sendmsg"
    spool_dir: str = "/var/spool/parley"  # where parley writes WAV chunks
    freeswitch_spool_dir: str = ""  # the same directory as FreeSWITCH sees it (default: spool_dir)
    first_chunk_ms: int = 200
    chunk_ms: int = 600
    max_chunk_ms: int = 2000

    @property
    def fs_dir(self) -> str:
        return self.freeswitch_spool_dir or self.spool_dir


@dataclass(frozen=True, slots=True)
class DialplanSettings:
    context: str = "public"
    extension_name: str = "parley_agent"
    destination_pattern: str = r"^(parley|agent)$"
    # Where a call goes when the agent cannot take it (the stream cannot start, or is lost for good):
    # "<extension> [XML [<context>]]" (default context: the agent's). Empty: the call is hung up.
    fallback_extension: str = ""
    record_sessions: bool = False

    def fallback(self) -> tuple[str, str, str] | None:
        """``fallback_extension`` as (extension, dialplan, context); None when unset. ConfigError if malformed."""
        parts = self.fallback_extension.split()
        if not parts:
            return None
        if len(parts) > 3:
            raise ConfigError(
                f"freeswitch.dialplan.fallback_extension: {self.fallback_extension!r} is not "
                "'<extension> [<dialplan> [<context>]]'"
            )
        extension = check_extension(parts[0], "freeswitch.dialplan.fallback_extension")
        dialplan = parts[1] if len(parts) > 1 else "XML"
        context = parts[2] if len(parts) > 2 else self.context
        if dialplan != "XML" or not DIALPLAN_CONTEXT.fullmatch(context):
            raise ConfigError(
                f"freeswitch.dialplan.fallback_extension: {self.fallback_extension!r}: parley transfers only "
                "within the XML dialplan, to a context name of letters, digits, '_', '.' and '-'"
            )
        return extension, dialplan, context


@dataclass(frozen=True, slots=True)
class FreeSwitchSettings:
    esl: EslSettings = field(default_factory=EslSettings)
    audio_stream: AudioStreamSettings = field(default_factory=AudioStreamSettings)
    playback: PlaybackSettings = field(default_factory=PlaybackSettings)
    dialplan: DialplanSettings = field(default_factory=DialplanSettings)
    # ESL clients allowed by the rendered ACL (CIDRs). Loopback only by default.
    esl_allowed_cidrs: tuple[str, ...] = ("127.0.0.1/32",)
    # Several FreeSWITCH nodes, each with its own ESL: [{name: fs-a, esl: {host, port, password}}, ...].
    # Empty: one node named "default" from `esl` above.
    nodes: tuple[EslNodeSettings, ...] = ()

    def esl_nodes(self) -> tuple[EslNodeSettings, ...]:
        """The configured nodes, or the single ``default`` node made of ``esl``."""
        return self.nodes or (EslNodeSettings(DEFAULT_NODE, self.esl),)

    def node(self, name: str | None = None) -> EslNodeSettings:
        """The node called ``name``; without a name, the only node (ConfigError when there are several)."""
        nodes = self.esl_nodes()
        if name is None:
            if len(nodes) == 1:
                return nodes[0]
            names = ", ".join(n.name for n in nodes)
            raise ConfigError(f"freeswitch.nodes lists {len(nodes)} nodes ({names}): name one")
        for node in nodes:
            if node.name == name:
                return node
        names = ", ".join(n.name for n in nodes)
        raise ConfigError(f"no FreeSWITCH node named {name!r} (configured: {names})")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    greeting_wav: str = ""  # empty: the greeting shipped in the package
    utterance_silence_ms: int = 600  # echo agent: silence that ends an utterance
    energy_threshold_dbfs: float = -40.0
    max_utterance_s: float = 15.0


# A dialplan extension as `uuid_transfer <uuid> <extension> XML <context>` takes it: one plain token (ASCII
# letters, digits, + * # _ . -), so no dial string (`sofia/...`, `sip:`, `bridge:`, `&app(...)`), no
# argument splitting (space, comma, quotes) and no variable expansion (`${...}`) can ride along.
DIALPLAN_EXTENSION = re.compile(r"[A-Za-z0-9+*#_.][A-Za-z0-9+*#_.-]{0,63}")
DIALPLAN_CONTEXT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
TRANSFER_TARGET_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # what the brain may say: front_desk, billing
LEGACY_TRANSFER_TARGET = "front_desk"  # the name `transfer_destination` is offered under


@dataclass(frozen=True, slots=True)
class TransferTarget:
    """Where the operator lets a transfer go: an extension of the XML dialplan in ``context`` (empty: the
    agent's own dialplan context). An outside number is an extension the operator writes in the dialplan
    (where ``toll_allow`` and the carrier gateway apply), never a dial string the brain chose."""

    extension: str
    context: str = ""
    description: str = ""  # offered to an LLM brain to tell the targets apart, e.g. "questions about bills"


def _transfer_target(name: object, value: object, where: str) -> tuple[str, TransferTarget]:
    if not isinstance(name, str) or not TRANSFER_TARGET_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: target name {name!r} must be a simple identifier (lower-case ASCII letters, digits and '_', "
            "starting with a letter, at most 32 characters): the brain says it, the operator maps it"
        )
    where = f"{where}.{name}"
    if isinstance(value, TransferTarget):
        target = value
    elif isinstance(value, str | int) and not isinstance(value, bool):
        target = TransferTarget(str(value))
    elif isinstance(value, Mapping):
        if unknown := sorted(set(value) - {"extension", "context", "description"}):
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: ['context', 'description', 'extension']")
        if "extension" not in value:
            raise ConfigError(f"{where}: missing 'extension' (an extension of your dialplan)")
        extension, context, description = (value.get(k, "") for k in ("extension", "context", "description"))
        if isinstance(extension, bool) or not all(isinstance(v, str | int) for v in (extension, context, description)):
            raise ConfigError(f"{where}: extension, context and description must be strings")
        target = TransferTarget(str(extension), str(context), str(description))
    else:
        raise ConfigError(f"{where}: expected an extension (\"1000\") or a mapping {{extension, context}}, "
                          f"got {type(value).__name__}")  # fmt: skip
    check_extension(target.extension, f"{where}.extension")
    if target.context and not DIALPLAN_CONTEXT.fullmatch(target.context):
        raise ConfigError(f"{where}.context: {target.context!r} is not a dialplan context name "
                          "(ASCII letters, digits, '_', '.', '-')")  # fmt: skip
    if any(c in target.description for c in "\r\n\x00"):
        raise ConfigError(f"{where}.description: must be one line")
    return name, target


def check_extension(extension: str, where: str) -> str:
    """``extension`` if it is one plain dialplan extension token, else a ConfigError that says why."""
    if DIALPLAN_EXTENSION.fullmatch(extension):
        return extension
    if extension.startswith(("sip:", "sips:", "sofia/", "bridge:", "&", "user/", "loopback/")) or "@" in extension:
        problem = (
            "is a dial string; parley transfers only to extensions of your dialplan, so that its context and "
            "toll_allow decide what may be dialled. Write an extension that bridges to it and name that here"
        )
    elif not extension:
        problem = "is empty"
    elif any(c.isspace() or c in ",'\"" for c in extension):
        problem = "contains whitespace, a comma or a quote (one extension; a context goes under 'context:')"
    else:
        problem = "is not a dialplan extension (ASCII letters, digits and + * # _ . - only, at most 64)"
    raise ConfigError(f"{where}: {extension!r} {problem}")


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    """Which providers talk and think, and what the agent says outside the brain."""

    # Each capability is a fallback chain, preferred provider first (a single name is fine):
    #   stt: whisper | deepgram | assemblyai       llm: rules | openai | anthropic
    #   tts: hibari | piper | espeak | deepgram | elevenlabs | cartesia | openai
    # Vendor options (models, voices, base URLs, api_key_env) live under `providers:`; keys come only
    # from environment variables.
    # pipeline: STT -> brain -> TTS, the chains below. realtime: one speech-to-speech model hears and speaks
    # (providers.realtime: {provider: openai | gemini, model, voice, turn_detection: server | parley}); the
    # pipeline chains below take the call over if that model fails (connect, auth, mid-call drop).
    engine: Literal["pipeline", "realtime"] = "pipeline"
    stt: tuple[str, ...] = ("whisper",)
    llm: tuple[str, ...] = ("rules",)  # rules: the offline deterministic dialogue policy
    tts: tuple[str, ...] = ("hibari",)
    rules_file: str = ""  # empty: the packaged Riverside Dental receptionist
    system_prompt: str = (
        "You are a friendly, efficient receptionist answering the phone. Speak in short, natural "
        "sentences: one or two per reply. Never use lists or markdown."
    )
    greeting: str = ""  # empty: the rules file's greeting (or no greeting for an LLM)
    idle_prompt: str = "Are you still there?"
    goodbye: str = "It seems we got disconnected. Goodbye!"
    # The only places the brain may transfer a call to: a name it may say -> an extension the operator wrote,
    # e.g. {front_desk: "1000", billing: {extension: "1001", context: default, description: "bills"}}.
    # The transfer tool is offered only when there is at least one target.
    transfer_targets: Mapping[str, TransferTarget] = field(default_factory=dict)
    # Deprecated: one extension, offered as the target "front_desk" (transfer_targets wins if it names it).
    transfer_destination: str = ""
    # When every provider of a capability has failed: a local voice says this, then the call ends
    # (or is transferred to the front_desk target, else the first target, when on_failure is "transfer").
    apology: str = "I'm sorry, I'm having technical difficulties. Please call again in a little while."
    # When parley cannot write its spool (disk full, read-only), the apology cannot be a WAV it writes: it is
    # this file as FreeSWITCH sees it (e.g. a recording of the apology in its sounds directory), else a tone.
    apology_fs_file: str = ""
    on_failure: Literal["hangup", "transfer"] = "hangup"
    # A provider that has produced nothing this long after the request is failed over (next in the chain,
    # else the apology): a queued or overloaded vendor stream can stay open sending only pings. Vendors'
    # time to first token is ~0.3-1 s and to first audio ~0.1-0.5 s on a good day, so these leave room for a
    # slow one without leaving the caller in silence for long. 0 turns a deadline off. Local models (whisper,
    # rules, hibari, piper, espeak) have none. The LLM's is the longer: failing over on a slow tail answers
    # from the next brain (the rules brain, offline), a worse reply than a late one; a voice is a voice.
    llm_first_token_timeout_s: float = 3.0
    tts_first_audio_timeout_s: float = 1.5
    # A brain that has said nothing this long after the caller's turn ended (a slow or stalled vendor, a long
    # tool-less think): the voice says ``hold_line`` while it goes on waiting, so the caller is not left in
    # silence (issue 10: the stalled LLM row left 3.55 s before the next brain answered). Healthy vendors' first
    # token comes in 0.3-1 s, so it is rarely heard. The line is part of what the agent said (transcript,
    # memory). 0 or an empty line: never.
    hold_after_s: float = 1.2
    hold_line: str = "One moment."
    # After parley ends a caller's turn, its final transcript must come within this long, else the recognizer is
    # failed over (the turn's audio replayed into the next one) or, with none left, the caller hears the
    # apology: a vendor can stop answering with its socket open (issue 10). Measured final-transcript latency
    # is 0.2-0.45 s (Deepgram, community discussion #1006); the clients' own bounded waits for an answer that
    # may legitimately not come (Deepgram Finalize 1.5 s, AssemblyAI ForceEndpoint 2.0 s) and whisper tiny.en's
    # slowest measured decode (1.35 s for a 12.5 s paragraph, docs/local-stack.md) must fit under it.
    stt_final_timeout_s: float = 2.5
    dtmf_gap_s: float = 1.0  # digits typed within this gap form one input ('#' ends it at once)
    # Overrides of the turn policy (parley.turns.policy.TurnPolicy holds the defaults and validates),
    # e.g. {silence_ms: 600, barge_in_min_speech_ms: 300, smart_turn: false}.
    turn: Mapping[str, float | int | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Parse and check the transfer targets (YAML gives strings or mappings), folding in the legacy key."""
        where = "conversation.transfer_targets"
        raw: object = self.transfer_targets
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping of names to extensions, got {type(raw).__name__}")
        targets = dict(_transfer_target(name, value, where) for name, value in raw.items())
        if self.transfer_destination:
            check_extension(self.transfer_destination, "conversation.transfer_destination")
            targets.setdefault(LEGACY_TRANSFER_TARGET, TransferTarget(self.transfer_destination))
        object.__setattr__(self, "transfer_targets", targets)


def default_token_secret_file() -> Path:
    """``$XDG_CONFIG_HOME/parley/stream-token.secret`` (``~/.config/...``): shared by `parley freeswitch
    config` (which writes it once, mode 600) and `parley serve` (which reads it)."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "parley" / "stream-token.secret"


def default_records_url() -> str:
    """SQLite in the user's data directory (created on first run)."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "parley"
    return f"sqlite+aiosqlite:///{(base / 'calls.db').resolve()}"


@dataclass(frozen=True, slots=True)
class RecordsSettings:
    """Call records: SQLite by default, PostgreSQL by URL (postgresql+asyncpg://...)."""

    url: str = ""  # empty: default_records_url(); PARLEY_RECORDS_URL overrides (keeps passwords out of YAML)
    enabled: bool = True
    recordings_dir: str = ""  # stereo call recordings (caller left, agent right); empty = off (privacy)
    recording_retention_days: int = 30
    host: str = ""  # a stable name for this instance (containers); empty = the hostname
    redact_callers: bool = True  # phone numbers are masked in the dashboard and logs unless disabled
    # the price table's hosting entry this instance runs on (e.g. cpu_box): its hourly price is shared over
    # each hour's call-minutes by `parley cost report` and the dashboard's Costs page; empty = not counted
    hosting: str = ""
    # where writes still queued at shutdown go when the database is down, full or read-only; written at the
    # next start (observe/records_spill.py). Empty: next to a SQLite file (<name>.spill/), else
    # $XDG_STATE_HOME/parley/records-spill (~/.local/state/...)
    spill_dir: str = ""

    @property
    def resolved_url(self) -> str:
        return self.url or default_records_url()


@dataclass(frozen=True, slots=True)
class ObserveSettings:
    """The HTTP server of `parley serve`: /metrics (Prometheus), /health, and the call dashboard.

    It has no login and shows transcripts: keep it on loopback (or behind an authenticating proxy)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8089
    # OpenTelemetry: spans per call and per turn stage, exported by OTLP/HTTP when an endpoint is set
    # (needs the `otel` extra). OTEL_EXPORTER_OTLP_ENDPOINT / PARLEY_OTLP_ENDPOINT override.
    otlp_endpoint: str = ""
    otlp_headers: Mapping[str, str] = field(default_factory=dict)
    service_name: str = "parley"
    # Caller speech and phone numbers are redacted from the logs (and span attributes) unless this is
    # set (PARLEY_LOG_CALLER_TEXT=1): transcripts belong in the call records, not in log pipelines.
    log_caller_text: bool = False
    # After a drain, keep /metrics up until Prometheus has scraped it once with the last call ended, at most
    # this long, so the final counters of a worker going away are read (one scrape interval, e.g. 20 s, where
    # Prometheus scrapes parley; a second stop signal ends the wait). 0: stop at once.
    final_scrape_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Settings:
    freeswitch: FreeSwitchSettings = field(default_factory=FreeSwitchSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    conversation: ConversationSettings = field(default_factory=ConversationSettings)
    # per-vendor options, e.g. {"openai": {"base_url": "http://127.0.0.1:11434/v1", "model": "llama3.1"},
    # "deepgram": {"stt_model": "nova-3"}, "whisper": {"threads": 1}}
    providers: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    records: RecordsSettings = field(default_factory=RecordsSettings)
    observe: ObserveSettings = field(default_factory=ObserveSettings)
    log_level: str = "INFO"


# --------------------------------------------------------------------------------------------------

T = TypeVar("T")


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'settings'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where or 'settings'}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value or {}, where)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if origin is tuple and (args := get_args(tp)) and is_dataclass(args[0]) and isinstance(args[0], type):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_build(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(str(v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    return value


def settings_from_mapping(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate settings from a parsed YAML mapping plus environment overrides."""
    settings = _build(Settings, data, "")
    return validate(apply_env(settings, os.environ if env is None else env))


def load_settings(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    data: Any = {}
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    return settings_from_mapping(data, env)


def apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    fs = settings.freeswitch
    esl, stream = fs.esl, fs.audio_stream
    if env.get("PARLEY_ESL_PASSWORD"):
        esl = replace(esl, password=env["PARLEY_ESL_PASSWORD"])
    if env.get("PARLEY_ESL_HOST"):
        esl = replace(esl, host=env["PARLEY_ESL_HOST"])
    if env.get("PARLEY_ESL_PORT"):
        esl = replace(esl, port=_coerce(int, env["PARLEY_ESL_PORT"], "PARLEY_ESL_PORT"))
    nodes = tuple(
        replace(n, esl=replace(n.esl, password=env[node_password_env(n.name)]))
        if env.get(node_password_env(n.name)) else n
        for n in fs.nodes
    )
    if env.get("PARLEY_STREAM_TOKEN_SECRET"):
        stream = replace(stream, token_secret=env["PARLEY_STREAM_TOKEN_SECRET"])
    playback = fs.playback
    if env.get("PARLEY_SPOOL_DIR"):
        playback = replace(playback, spool_dir=env["PARLEY_SPOOL_DIR"])
    fs = replace(fs, esl=esl, audio_stream=stream, playback=playback, nodes=nodes)
    records = settings.records
    if env.get("PARLEY_RECORDS_URL"):
        records = replace(records, url=env["PARLEY_RECORDS_URL"])
    observe = settings.observe
    otlp = env.get("PARLEY_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if otlp:
        observe = replace(observe, otlp_endpoint=otlp)
    if flag := env.get("PARLEY_LOG_CALLER_TEXT"):
        observe = replace(observe, log_caller_text=_coerce(bool, flag, "PARLEY_LOG_CALLER_TEXT"))
    return replace(settings, freeswitch=fs, records=records, observe=observe,
                   log_level=env.get("PARLEY_LOG_LEVEL", settings.log_level))



def validate(settings: Settings) -> Settings:
    stream = settings.freeswitch.audio_stream
    if stream.sample_rate % 8000 or stream.sample_rate <= 0:
        raise ConfigError(
            f"freeswitch.audio_stream.sample_rate: {stream.sample_rate} is not a multiple of 8000 "
            "(mod_audio_stream accepts 8k, 16k or another multiple of 8000)"
        )
    if stream.queue_frames < 1:
        raise ConfigError("freeswitch.audio_stream.queue_frames must be at least 1")
    if stream.restart_attempts < 0 or stream.max_restarts < 0 or stream.restart_backoff_s < 0:
        raise ConfigError("freeswitch.audio_stream: restart_attempts, max_restarts and restart_backoff_s "
                          "must not be negative")
    if stream.stall_timeout_s < 0:
        raise ConfigError("freeswitch.audio_stream.stall_timeout_s must be 0 (off) or more")
    settings.freeswitch.dialplan.fallback()  # raises on a malformed fallback_extension
    validate_nodes(settings.freeswitch.nodes)
    pb = settings.freeswitch.playback
    if not 20 <= pb.first_chunk_ms <= pb.max_chunk_ms or not 20 <= pb.chunk_ms <= pb.max_chunk_ms:
        raise ConfigError("freeswitch.playback: need 20 <= first_chunk_ms, chunk_ms <= max_chunk_ms")
    return settings


def validate_nodes(nodes: tuple[EslNodeSettings, ...]) -> None:
    """Node names are letters, digits, ``-`` and ``_``, unique (also as environment variable names), and each
    node's ESL port is a TCP port. ConfigError says which node is wrong and why."""
    seen: dict[str, str] = {}
    for i, node in enumerate(nodes):
        where = f"freeswitch.nodes[{i}]"
        if not isinstance(node.name, str) or not NODE_NAME.fullmatch(node.name):
            raise ConfigError(f"{where}.name: {node.name!r} must be 1-64 letters, digits, '-' or '_' (the stream "
                              "metadata and /health name the node by it)")
        env = node_password_env(node.name)
        if env in seen:
            same = "is used twice" if seen[env] == node.name else f"and {seen[env]!r} share {env}"
            raise ConfigError(f"{where}.name: {node.name!r} {same}: node names must be unique")
        seen[env] = node.name
        if not 0 < node.esl.port < 65536:
            raise ConfigError(f"{where}.esl.port: {node.esl.port} is not a TCP port")


def require_esl_password(esl: EslSettings) -> str:
    """The ESL password, or a ConfigError if it is missing or a well-known default."""
    if not esl.password:
        raise ConfigError(
            "no ESL password configured: set PARLEY_ESL_PASSWORD (or freeswitch.esl.password) to the "
            "password in FreeSWITCH's event_socket.conf.xml"
        )
    if esl.password.lower() in FORBIDDEN_PASSWORDS:
        raise ConfigError(
            "refusing to use a default ESL password: ESL is shell access to the FreeSWITCH host. "
            "Set a long random password in event_socket.conf.xml (`parley freeswitch config` renders one) "
            "and in PARLEY_ESL_PASSWORD"
        )
    return esl.password


def require_node_passwords(fs: FreeSwitchSettings) -> None:
    """:func:`require_esl_password` for every node (``freeswitch.esl`` when no nodes are listed, which is then
    ignored), the error naming the node and its ``PARLEY_ESL_PASSWORD_<NAME>`` when there are nodes."""
    if not fs.nodes:
        require_esl_password(fs.esl)
        return
    for node in fs.nodes:
        try:
            require_esl_password(node.esl)
        except ConfigError as exc:
            raise ConfigError(f"FreeSWITCH node {node.name!r}: {exc} (for this node: {node_password_env(node.name)} "
                              "or its esl.password)") from None
