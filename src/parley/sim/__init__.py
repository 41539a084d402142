"""What ``parley demo``, ``simulate`` and ``bench`` ship: a fake FreeSWITCH that speaks ESL and
mod_audio_stream over real sockets (reproducing the recorded 1.10.12 behaviours), the scripted caller, the
caller's-ear measurement and the simulation reports.

Never imported by the production call path. The vendor fakes, the fuzz harness and the fault proxy are test
code and live in ``tests/testkit`` (not in the wheel).
"""

from parley.sim.fake_freeswitch import FakeCall, FakeFreeSwitch

__all__ = ["FakeCall", "FakeFreeSwitch"]
