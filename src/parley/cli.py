"""The ``parley`` command line. Parses arguments, loads settings, and calls into the package."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from parley.errors import ConfigError, EslProtocolError, ParleyError

if TYPE_CHECKING:
    from parley.config import Settings


def _settings(args: argparse.Namespace) -> Settings:
    from parley.config import load_settings

    return load_settings(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from parley.app import serve
    from parley.config import require_node_passwords
    from parley.eventloop import resolve_loop, run_on

    settings = _settings(args)
    _setup_logging(settings.log_level, settings)
    require_node_passwords(settings.freeswitch)  # every node's (freeswitch.esl when none are listed)
    grace = _drain_grace(args)
    loop = resolve_loop(args.loop)  # auto: uvloop when installed (parley[fast]), measured faster by bench density
    if args.workers > 1:
        from parley.app import stream_secret
        from parley.workers import run_workers

        stream_secret(settings)  # refuse to start N workers without a stream secret, before spawning any
        return run_workers(args.workers, args.config, ["--drain-grace-s", str(grace), "--loop", loop])
    ownership = args.call_ownership or os.environ.get("PARLEY_CALL_OWNERSHIP") or "event"
    index = args.worker_index
    if ownership == "event":
        return run_on(loop, serve(settings, drain_grace_s=grace, call_ownership="event", worker_index=index))
    if ownership == "stream":
        return run_on(loop, serve(settings, drain_grace_s=grace, call_ownership="stream", worker_index=index))
    raise ConfigError(f"call ownership: {ownership!r} is not 'event' or 'stream'")


def _drain_grace(args: argparse.Namespace) -> float:
    from parley.app import DRAIN_GRACE_S

    raw = args.drain_grace_s if args.drain_grace_s is not None else os.environ.get("PARLEY_DRAIN_GRACE_S")
    try:
        grace = DRAIN_GRACE_S if raw is None else float(raw)
    except ValueError:
        raise ConfigError(f"drain grace: {raw!r} is not a number of seconds") from None
    if not grace >= 0:
        raise ConfigError(f"drain grace: {raw!r} must be >= 0 seconds")
    return grace


def cmd_drain(args: argparse.Namespace) -> int:
    """POST /drain to the local `parley serve`; with --wait, poll /ready until no call is up (or it exits)."""
    import time

    import httpx

    settings = _settings(args)
    host = settings.observe.host if settings.observe.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    base = args.url or f"http://{'[' + host + ']' if ':' in host else host}:{settings.observe.port}"
    try:
        reply = httpx.post(f"{base}/drain", timeout=5.0)
    except httpx.HTTPError as exc:
        print(f"parley drain: cannot reach {base} ({exc})", file=sys.stderr)
        return 1
    if reply.status_code != 202:
        print(f"parley drain: {base}/drain answered {reply.status_code}: {reply.text.strip()[:200]}", file=sys.stderr)
        return 1
    print(f"draining: {reply.text.strip()}", flush=True)
    deadline = time.monotonic() + args.timeout
    while args.wait and time.monotonic() < deadline:
        try:
            state = httpx.get(f"{base}/ready", timeout=5.0).json()
        except (httpx.HTTPError, ValueError):
            return 0  # the process is gone: drained and exited
        if not state.get("active_calls"):
            print("drained: no call up", flush=True)
            return 0
        time.sleep(1.0)
    return 1 if args.wait else 0


def cmd_records_migrate(args: argparse.Namespace) -> int:
    from parley.observe.records import migrate

    settings = _settings(args)
    _setup_logging("INFO", settings)
    if not settings.records.enabled:
        print("call records are disabled (records.enabled: false): nothing to migrate", flush=True)
        return 0
    asyncio.run(migrate(settings.records.resolved_url))
    print("call records database migrated to the latest revision", flush=True)
    return 0


def cmd_decode_esl(args: argparse.Namespace) -> int:
    from parley.freeswitch.decode import decode_capture

    data = Path(args.file).read_bytes() if args.file != "-" else sys.stdin.buffer.read()
    return decode_capture(data, as_json=args.json, out=sys.stdout, err=sys.stderr)


def cmd_freeswitch_config(args: argparse.Namespace) -> int:
    from parley.freeswitch.conf_render import render_config

    result = render_config(_settings(args), Path(args.out), node=args.node)
    print(result.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from parley.sim.demo_report import print_report
    from parley.sim.echo_call import run_echo_call

    _setup_logging("WARNING" if not args.verbose else "INFO", _settings_for_logging(args))
    result = asyncio.run(run_echo_call())
    print_report(result, sys.stdout, Path(args.out) if args.out else None)
    ok = result.calls_left == 0 and not result.spool_left and result.result.echoes
    return 0 if ok else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    import tempfile

    from parley.app import build_engine
    from parley.sim.caller_voice import caller_voice
    from parley.sim.sim_report import print_simulation
    from parley.sim.simulate import load_scenario, run_scenario, shipped_scenarios, write_recording

    settings = _settings(args)
    _setup_logging("INFO" if args.verbose else "WARNING", settings)
    if args.scenario in (None, "list"):
        for path in shipped_scenarios():
            print(path)
        return 0
    path = Path(args.scenario)
    if not path.exists():
        matches = [p for p in shipped_scenarios() if p.stem == args.scenario]
        if not matches:
            raise ConfigError(f"no scenario file {args.scenario!r} (shipped: {[p.stem for p in shipped_scenarios()]})")
        path = matches[0]
    scenario = load_scenario(path)
    conv = settings.conversation
    print(f"loading stt {'>'.join(conv.stt)}, llm {'>'.join(conv.llm)}, tts {'>'.join(conv.tts)} ...", file=sys.stderr)
    engine = build_engine(settings)
    voice = caller_voice(args.caller_voice or scenario.caller_voice, engine.tts)
    with tempfile.TemporaryDirectory(prefix="parley-sim-") as spool:
        records = settings.records.resolved_url if settings.records.enabled and not args.no_record else None
        result = asyncio.run(run_scenario(scenario, engine, voice, Path(spool), records_url=records))
    print_simulation(result, sys.stdout)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.as_dict(), indent=2, default=str))
        print(f"  json: {args.json}")
    if args.wav:
        write_recording(result, Path(args.wav))
        print(f"  recording (left: caller, right: agent as heard): {args.wav}")
    return 0


def cmd_providers_check(args: argparse.Namespace) -> int:
    from parley.compose import Providers, check_providers, live_check

    settings = _settings(args)
    _setup_logging("WARNING", settings)
    made = Providers(settings)
    results = asyncio.run(check_providers(made))
    live = asyncio.run(live_check(made)) if args.live else []
    if args.json:
        rows = [_slots(r) for r in results]
        print(json.dumps({"check": rows, "live": [_slots(r) for r in live]} if args.live else rows, indent=2))
    else:
        print(f"{'capability':<10} {'provider':<16} {'status':<22} {'ms':>8}  detail")
        for r in results:
            print(f"{r.capability:<10} {r.provider:<16} {r.status:<22} {r.ms:>8.1f}  {r.detail[:100]}")
        if args.live:
            print(f"\nlive: one short real request each\n{'capability':<10} {'provider':<16} {'status':<14} "
                  f"{'first ms':>9} {'total ms':>9}  result")
            for lr in live:
                print(f"{lr.capability:<10} {lr.provider:<16} {lr.status:<14} {lr.first_ms:>9.1f} "
                      f"{lr.total_ms:>9.1f}  {lr.detail[:100]}")
    ok = all(r.status == "ok" for r in results) and all(lr.status in ("ok", "skipped") for lr in live)
    return 0 if ok else 1


def _slots(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in getattr(obj, "__slots__", ())}


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from parley.bench.latency import run_latency_command

    settings = _settings(args)
    _setup_logging("WARNING", settings)
    return run_latency_command(settings, runs=args.runs, scenarios=args.scenario, json_path=args.json)


def cmd_bench_density(args: argparse.Namespace) -> int:
    from parley.bench.density import parse_sizes, run_density_command, variants_from

    _setup_logging("WARNING", _settings_for_logging(args))
    variants = variants_from(
        parse_sizes(args.workers, "--workers"), [x.strip() for x in args.loop.split(",") if x.strip()],
        ws_speedups={"on": (True,), "off": (False,), "both": (True, False)}[args.ws_speedups],
        vads=("batched", "per-call") if args.vad == "both" else (args.vad,),
    )
    return run_density_command(parse_sizes(args.calls), args.seconds, args.json, variants=variants,
                               profile_dir=args.profile)


def cmd_bench_turns(args: argparse.Namespace) -> int:
    from parley.bench.turns import Timing, run_turns_command

    _setup_logging("WARNING", _settings_for_logging(args))
    timing = Timing(score_ms=args.score_ms, stt_ms=args.stt_ms, reply_ms=args.reply_ms)
    return run_turns_command(args.json, limit=args.limit, only=args.items, timing=timing, use_stt=not args.no_stt,
                             cache=args.cache, verbose=args.verbose)


def cmd_cost_estimate(args: argparse.Namespace) -> int:
    from parley.observe.cost import PriceTable
    from parley.observe.cost_cli import cost_estimate, profile_from_args

    prices = PriceTable.load(args.prices)
    return cost_estimate(profile_from_args(args), prices=prices, out=sys.stdout, as_json=args.json)


def cmd_cost_report(args: argparse.Namespace) -> int:
    from parley.observe.cost import PriceTable
    from parley.observe.cost_cli import cost_report
    from parley.observe.records import recorded_calls_for_cost

    settings = _settings(args)
    prices = PriceTable.load(args.prices)
    box = args.hosting if args.hosting is not None else settings.records.hosting
    hosting = prices.hosting_share(box, 0) if box and box != "none" else None
    url = args.db or settings.records.resolved_url
    calls = asyncio.run(recorded_calls_for_cost(url, since=args.since))
    return cost_report(calls, prices=prices, out=sys.stdout, since=args.since, hosting=hosting, as_json=args.json)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from parley.observe.cost import PriceTable
    from parley.observe.dashboard import run_dashboard

    settings = _settings(args)
    _setup_logging("WARNING", settings)
    url = args.db or settings.records.resolved_url
    asyncio.run(run_dashboard(
        url,
        host=args.host,
        port=args.port,
        redact=settings.records.redact_callers and not args.show_callers,
        prices=PriceTable.load(args.prices),
        hosting=(args.hosting if args.hosting is not None else settings.records.hosting) or None,
        on_ready=lambda u: print(f"parley dashboard on {u}/ (records: {url})", flush=True),
    ))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Self-hosted real-time voice agent for FreeSWITCH")
    parser.add_argument("--config", "-c", help="YAML settings file (secrets come from PARLEY_* env vars)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the mod_audio_stream server and the ESL client")
    p.add_argument("--drain-grace-s", type=float, default=None,
                   help="on SIGTERM / `parley drain`: how long calls may go on before a goodbye and a hangup "
                        "(default: PARLEY_DRAIN_GRACE_S, else 600)")
    p.add_argument("--call-ownership", choices=("event", "stream"), default=None,
                   help="event (default): every parley call of this FreeSWITCH is ours; stream: only the calls "
                        "whose stream we hold (several workers on one FreeSWITCH; needs the Lua helper dialplan). "
                        "Default: PARLEY_CALL_OWNERSHIP, else event")
    p.add_argument("--workers", type=int, default=1,
                   help="N worker processes behind the one WebSocket port (SO_REUSEPORT), each owning the calls "
                        "whose stream it holds; worker i serves HTTP on observe.port + i (default 1)")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="the event loop: auto (default) is uvloop when installed (pip install 'parley[fast]'), "
                        "else asyncio's")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("drain", help="make the local `parley serve` stop taking calls, finish them and exit")
    p.add_argument("--url", help="its HTTP base URL (default: http://127.0.0.1:<observe.port>)")
    p.add_argument("--wait", action="store_true", help="wait until no call is up (or the process has exited)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up waiting after this long (s)")
    p.set_defaults(func=cmd_drain)

    records = sub.add_parser("records", help="call records tools").add_subparsers(dest="records_command",
                                                                                  required=True)
    p = records.add_parser("migrate", help="bring the records database to the latest schema (once per cluster)")
    p.set_defaults(func=cmd_records_migrate)

    p = sub.add_parser("demo", help="a whole simulated call (echo agent) through a fake FreeSWITCH")
    p.add_argument("--out", default="out/demo-call.wav", help="stereo WAV of the call ('' for none)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="a scripted caller phones the agent (local stack, fake FreeSWITCH)")
    p.add_argument("scenario", nargs="?", help="a scenario YAML, or the name of a shipped one; 'list' lists them")
    p.add_argument("--json", help="write the result as JSON to this file")
    p.add_argument("--wav", default="out/simulate.wav", help="stereo recording ('' for none)")
    p.add_argument("--no-record", action="store_true", help="do not write the call to the call records")
    p.add_argument("--caller-voice", choices=["hibari-low", "espeak", "piper", "hibari"],
                   help="override the scenario's caller voice")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="benchmarks: per-stage latency, calls per process")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser("latency", help="the scripted scenarios on the local stack, N times: p50/p95 per stage")
    p.add_argument("--runs", type=int, default=3, help="times each scenario runs (default 3)")
    p.add_argument("--scenario", nargs="+", help="scenario names or YAML files (default: every shipped one)")
    p.add_argument("--json", help="write the figures as JSON to this file")
    p.set_defaults(func=cmd_bench_latency)
    p = bench_sub.add_parser("density", help="concurrent calls through instant fake providers: CPU, RSS, lag, drops")
    p.add_argument("--calls", default="10,50,100,200", help="comma-separated call counts (default 10,50,100,200)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window per size (default 20)")
    p.add_argument("--vad", choices=("batched", "per-call", "both"), default="batched",
                   help="Silero batched across calls (parley's live path), run per call, or both side by side")
    p.add_argument("--workers", default="1",
                   help="comma-separated worker counts, side by side (e.g. 1,2): N processes on one WebSocket "
                        "port with stream call ownership, as `parley serve --workers N` (default 1)")
    p.add_argument("--loop", default="asyncio",
                   help="comma-separated event loops, side by side: asyncio, uvloop, auto (default asyncio)")
    p.add_argument("--ws-speedups", choices=("on", "off", "both"), default="on",
                   help="websockets' C frame unmasking (on, as installed), its pure-Python fallback, or both")
    p.add_argument("--profile", metavar="DIR",
                   help="cProfile each worker over the window (pstats files in DIR) and print where a frame's "
                        "CPU goes by stage; the profiler slows the run, so its other figures are not comparable")
    p.add_argument("--json", help="write the figures as JSON to this file")
    p.set_defaults(func=cmd_bench_density)
    p = bench_sub.add_parser("turns", help="VAD + end-of-turn configurations on the phone-audio turn corpus")
    p.add_argument("--json", help="write the figures as JSON to this file")
    p.add_argument("--limit", type=int, help="only the first N corpus items")
    p.add_argument("--items", nargs="+", help="only these corpus item ids")
    p.add_argument("--score-ms", type=float, default=50.0, help="modelled smart-turn latency (default 50)")
    p.add_argument("--stt-ms", type=float, default=150.0, help="modelled speculative-STT latency (default 150)")
    p.add_argument("--reply-ms", type=float, default=40.0,
                   help="modelled end of turn (or its release) -> first audible agent sample (default 40, "
                        "measured with speculative replies by parley bench latency)")
    p.add_argument("--no-stt", action="store_true", help="no speculative transcripts (no lexical signal)")
    p.add_argument("--cache", help="corpus cache folder (default ~/.cache/parley/turn-corpus)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_bench_turns)

    from parley.observe.cost_cli import add_estimate_arguments, add_report_arguments

    cost = sub.add_parser("cost", help="per-call cost").add_subparsers(dest="cost_command", required=True)
    p = cost.add_parser("estimate", help="the article's 5-minute call on stacks A, B, C, or your own profile")
    add_estimate_arguments(p)
    p.set_defaults(func=cmd_cost_estimate)
    p = cost.add_parser("report", help="cost of recorded calls")
    add_report_arguments(p)
    p.add_argument("--db", help="records database URL (default: the configured one)")
    p.set_defaults(func=cmd_cost_report)

    p = sub.add_parser("dashboard", help="browse the call records: transcripts, latency waterfalls, cost")
    p.add_argument("--db", help="records database URL (default: the configured one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089)
    p.add_argument("--show-callers", action="store_true", help="show phone numbers unmasked")
    p.add_argument("--prices", help="price table YAML (default: the shipped one)")
    p.add_argument("--hosting", help="the Costs page's hosting entry (default: records.hosting; 'none')")
    p.set_defaults(func=cmd_dashboard)

    prov = sub.add_parser("providers", help="provider tools").add_subparsers(dest="prov_command", required=True)
    p = prov.add_parser("check", help="are the configured providers reachable and authenticated, their models current?")
    p.add_argument("--json", action="store_true")
    p.add_argument("--live", action="store_true",
                   help="also send one short real (billed) request per cloud provider and print time to first result")
    p.set_defaults(func=cmd_providers_check)

    fs = sub.add_parser("freeswitch", help="FreeSWITCH tools").add_subparsers(dest="fs_command", required=True)
    p = fs.add_parser("decode-esl", help="decode a raw ESL capture (FreeSWITCH -> client bytes)")
    p.add_argument("file", help="capture file, or - for stdin")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.set_defaults(func=cmd_decode_esl)
    p = fs.add_parser("config", help="render the dialplan, Lua helper and hardened ESL config")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--node", default=None, help="the FreeSWITCH node (freeswitch.nodes) these files are for; "
                   "its ESL settings are used and the stream metadata names it (default: the only node)")
    p.set_defaults(func=cmd_freeswitch_config)
    return parser


def _setup_logging(level: str, settings: Settings) -> None:
    """Every subcommand that logs comes here, after its settings are loaded: caller text and phone numbers
    stay redacted unless ``observe.log_caller_text`` (PARLEY_LOG_CALLER_TEXT=1) says otherwise."""
    from parley.observe.logs import setup

    setup(level, os.environ.get("PARLEY_LOG_FORMAT", "text"), caller_text=settings.observe.log_caller_text)


def _settings_for_logging(args: argparse.Namespace) -> Settings:
    """Settings for a subcommand that needs them only for logging: a config it cannot load keeps redaction on."""
    from parley.config import Settings

    try:
        return _settings(args)
    except ConfigError as exc:
        print(f"parley: ignoring the configuration for logging ({exc}); caller text stays redacted", file=sys.stderr)
        return Settings()


def main(argv: Sequence[str] | None = None) -> int:
    # numpy's BLAS threads otherwise keep both cores busy after each log-mel step and double the
    # smart-turn decision time on a 2-core box (measured: ~48 ms -> ~110 ms). Must precede numpy's import.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"parley: configuration error: {exc}", file=sys.stderr)
        return 2
    except EslProtocolError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 1
    except ParleyError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `parley ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
