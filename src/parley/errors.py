"""The one exception tree of parley.

Everything parley raises on purpose is a :class:`ParleyError`. Third-party exceptions (socket errors,
websockets, vendor SDKs) are translated at the edge that calls them, so nothing above that edge needs to
know which library failed. Whether an operation may be retried is data on the error (``retryable``),
never a guess made from the class name by the caller.

::

    ParleyError
    ├── ConfigError                  bad or unsafe settings (refused at start-up)
    ├── ProtocolError                bytes that break a wire protocol
    │   ├── EslProtocolError         malformed / truncated / oversized ESL input
    │   └── AudioStreamProtocolError a mod_audio_stream frame we cannot use
    ├── FreeSwitchError              talking to FreeSWITCH over ESL failed
    │   ├── EslConnectError          TCP connect refused / unreachable      (retryable)
    │   ├── EslConnectionLost        the ESL socket closed under us         (retryable)
    │   │   └── EslOutcomeUnknown    a must-not-repeat command was written, then the link dropped
    │   ├── EslAuthError             wrong ESL password                     (not retryable)
    │   ├── EslAccessDenied          ACL rejection (text/rude-rejection)    (not retryable)
    │   ├── EslTimeout               no reply / no BACKGROUND_JOB in time   (retryable)
    │   └── EslCommandError          FreeSWITCH answered -ERR
    └── CallError                    something about one call
        ├── CallGone                 the call hung up / is unknown to FreeSWITCH
        └── PlaybackError            audio could not be queued for the caller
            └── SpoolError           the spool directory cannot be written (disk full, read-only, gone)
"""

from __future__ import annotations


class ParleyError(Exception):
    """Base of every error parley raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConfigError(ParleyError):
    """Settings that are missing, malformed or unsafe (e.g. the default ESL password)."""


class ProtocolError(ParleyError):
    """Input that violates a wire protocol. The connection that produced it cannot be trusted further."""


class EslProtocolError(ProtocolError):
    """Malformed, truncated or oversized Event Socket input."""


class AudioStreamProtocolError(ProtocolError):
    """A mod_audio_stream WebSocket frame or handshake we cannot accept."""


class FreeSwitchError(ParleyError):
    """Talking to FreeSWITCH over the Event Socket failed."""


class EslConnectError(FreeSwitchError):
    """The TCP connection to the Event Socket could not be made."""

    retryable = True


class EslConnectionLost(FreeSwitchError):
    """The Event Socket connection closed while we needed it."""

    retryable = True


class EslAuthError(FreeSwitchError):
    """FreeSWITCH rejected the ESL password (``-ERR invalid``)."""


class EslAccessDenied(FreeSwitchError):
    """FreeSWITCH's ACL refused this client (``text/rude-rejection``)."""


class EslOutcomeUnknown(EslConnectionLost):
    """A command that must not run twice was written, then the connection dropped before its reply.

    It may or may not have run; it is never re-sent. ``event_uuid``/``job_uuid`` let the caller look for
    its traces (CHANNEL_EXECUTE ``Application-UUID``, BACKGROUND_JOB ``Job-UUID``).
    """

    retryable = False

    def __init__(self, message: str, *, command: str, event_uuid: str | None = None,
                 job_uuid: str | None = None) -> None:
        super().__init__(message)
        self.command = command
        self.event_uuid = event_uuid
        self.job_uuid = job_uuid


class EslTimeout(FreeSwitchError):
    """A command got no reply, or a background job no result, within its deadline."""

    retryable = True


class EslCommandError(FreeSwitchError):
    """FreeSWITCH answered a command with ``-ERR ...``."""

    def __init__(self, command: str, reply: str) -> None:
        super().__init__(f"FreeSWITCH rejected {command!r}: {reply}")
        self.command = command
        self.reply = reply


class CallError(ParleyError):
    """Something went wrong with one call; other calls are unaffected."""


class CallGone(CallError):
    """The call has hung up, or FreeSWITCH does not know its UUID."""


class PlaybackError(CallError):
    """Agent audio could not be queued for the caller."""


class SpoolError(PlaybackError):
    """The WAV spool cannot be written (disk full, read-only, missing): nothing written there will play, so
    an apology must come from somewhere else (a FreeSWITCH-side file or a tone)."""
