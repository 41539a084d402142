"""Test and simulation support: a fake FreeSWITCH that speaks ESL and mod_audio_stream over real sockets.

Never imported by production code paths (only by ``parley demo``/``simulate``/``bench`` and the tests).
"""

from parley.testing.fake_freeswitch import FakeCall, FakeFreeSwitch

__all__ = ["FakeCall", "FakeFreeSwitch"]
