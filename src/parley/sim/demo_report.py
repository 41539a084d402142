"""Printing a simulated echo call for a person: what parley sent, what FreeSWITCH played, the timings."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from parley.audio.wav import write_stereo_wav
from parley.sim.echo_call import RATE, EchoCallResult


def _ms(a: float | None, b: float | None) -> str:
    return f"{(b - a) * 1000:7.1f} ms" if a is not None and b is not None else "      n/a"


def print_report(r: EchoCallResult, out: TextIO, wav_path: Path | None = None) -> None:
    w = out.write
    w(f"call {r.call_uuid}: {len(r.commands)} ESL commands from parley\n")
    for cmd in r.commands:
        first = cmd.split("\n", 1)[0]
        if first.startswith("auth "):
            first = "auth <password>"
        arg = next((ln for ln in cmd.split("\n") if ln.startswith("execute-app-arg:")), "")
        w(f"  > {first[:70]:<70} {arg.removeprefix('execute-app-arg: ').split('}')[0] + '}' if arg else ''}\n")
    w("\nplayback as FreeSWITCH ran it (s since answer):\n")
    t0 = r.fake_call.answered_at or 0.0
    for p in r.fake_call.playbacks:
        tag = p.path.split("}")[0].strip("{")
        if p.flushed:
            w(f"  {tag:<48} flushed by uuid_break all (never played)\n")
        elif p.started_at is not None:
            stop = f"{p.stopped_at - t0:6.2f}" if p.stopped_at is not None else "   ..."
            w(f"  {tag:<48} {p.started_at - t0:6.2f} -> {stop}  {p.status}\n")
    res = r.result
    w("\nlatency per echo (caller speech end -> ...):\n")
    w("  utterance      silence detected   command written   PLAYBACK_START\n")
    for e in res.echoes:
        rep = e.utterance.report()
        w(f"  {e.utterance.id:<14} {_ms(e.speech_end_t, e.detected_t)}   {_ms(e.speech_end_t, rep.first_command_at)}"
          f"    {_ms(e.speech_end_t, rep.first_start_at)}\n")
    w("  (the configured end-of-utterance silence is 600 ms: the rest is parley + FreeSWITCH)\n")
    for b in res.barge_ins:
        w(f"\nbarge-in: caller speech onset -> uuid_break written {_ms(b.speech_onset_t, b.barge.break_written_at)}"
          f", -> PLAYBACK_STOP {_ms(b.speech_onset_t, b.barge.stopped_at)}\n")
        for u in b.barge.utterances:
            w(f"  utterance {u.utterance_id}: caller heard {u.heard_ms:.0f} of {u.queued_ms:.0f} ms queued\n")
    w(f"\nhangup: calls left in parley {r.calls_left}, spool files left {len(r.spool_left)}\n")
    if wav_path is not None:
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        write_stereo_wav(wav_path, r.caller_audio, r.heard, RATE)
        w(f"stereo recording (left: caller, right: what the caller heard): {wav_path}\n")
