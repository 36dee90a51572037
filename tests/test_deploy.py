"""The deployment files: the image, compose and Kubernetes, checked against their schemas and our commands.

Nothing here builds an image, pulls one or talks to a cluster: Kubernetes objects are validated
with the schemas ``kubernetes-validate`` bundles, the KEDA ScaledObject with its vendored CRD, the
compose file with the vendored compose specification (tests/schemas/README.md says where each
comes from), and every command line in them is walked through the real click commands.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from parcelo import defaults
from parcelo.cli import cli as parcelo_cli
from parcelo.coordinator.cli import main as coordinator_cli
from parcelo.handlers import load
from parcelo.testing import BIN
from parcelo.worker_cli import main as worker_cli
from tests.deploy_files import (
    DEPLOY,
    K8S_BASE,
    K8S_OVERLAY,
    ROOT,
    SCHEMAS,
    Manifest,
    Stage,
    by_kind,
    container_argv,
    containers,
    envvars,
    exec_form,
    flag_value,
    iter_strings,
    key_values,
    load_all,
    load_compose,
    load_one,
    pod_spec,
    render,
    seconds,
    service_argv,
    stages,
    unit,
    unknown_flags,
)

KUBERNETES_VERSIONS = ("1.27", "1.37")
"""The oldest Kubernetes the manifests claim (native gRPC probes are GA from 1.27, the PDB's
unhealthyPodEvictionPolicy is on by default from 1.27) and the newest kubernetes-validate 1.37.0
bundles; strict schemas, so a misspelt field fails instead of being dropped by the API server."""

SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

COMMANDS: dict[str, click.Command] = {
    "parcelo": parcelo_cli,
    "parcelo-worker": worker_cli,
    "parcelo-coordinator": coordinator_cli,
}
"""Each console script's click command (``parcelo.cli:main`` runs the ``cli`` group)."""

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
WORKER_EXAMPLE = DEPLOY / "docker" / "worker-example"
IMAGE_UID = 10001

SECRET_NAME = re.compile(r"(?i)token|secret|passw|api_?key|private|credential")
SECRET_VALUE = re.compile(r"(?i)sha256:[0-9a-f]{16}|-----BEGIN|^[A-Za-z0-9_+/=-]{32,}$")

KEDA_PROMETHEUS_METADATA = frozenset(
    {
        "serverAddress",
        "query",
        "queryParameters",
        "threshold",
        "activationThreshold",
        "namespace",
        "customHeaders",
        "ignoreNullValues",
        "unsafeSsl",
        "awsRegion",
        "timeout",
        "identityOwner",
    }
)
"""The Prometheus scaler's trigger metadata in KEDA v2.20.2 (pkg/scalers/prometheus_scaler.go);
the CRD types metadata as any string map, so a misspelt key would be ignored silently."""


def base() -> list[Manifest]:
    return render(K8S_BASE)


def overlay() -> list[Manifest]:
    return render(K8S_OVERLAY)


RENDERINGS = {"base": base, "overlay": overlay}


def program(argv: list[str]) -> str:
    """The console script a command line runs (a path to it, as systemd units give, counts)."""
    return Path(argv[0]).name


# -- the command lines of every deployment file --------------------------------------------------


def command_lines() -> Iterator[tuple[str, list[str]]]:
    """``(where, argv)`` of every command the deployment files run."""
    _, (*_, final) = stages(DOCKERFILE)
    yield "dockerfile-cmd", exec_form(final.last("CMD") or "[]")
    yield "dockerfile-healthcheck", healthcheck_argv(final)
    _, (*_, example) = stages(WORKER_EXAMPLE / "Dockerfile")
    yield "worker-example-cmd", exec_form(example.last("CMD") or "[]")
    for name, service in load_compose()["services"].items():
        if service.get("image", "").startswith("parcelo"):
            yield f"compose-{name}", service_argv(service)
    for rendering, objects in RENDERINGS.items():
        for obj in objects():
            for container in containers(obj):
                yield f"k8s-{rendering}-{container['name']}", container_argv(container)
    for name in ("parcelo-coordinator.service", "parcelo-worker@.service"):
        yield f"systemd-{name.split('.')[0]}", unit(DEPLOY / name)[0]


def healthcheck_argv(stage: Stage) -> list[str]:
    value = stage.last("HEALTHCHECK")
    assert value is not None, "no HEALTHCHECK"
    _, sep, command = value.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {value}"
    return exec_form(command)


def environments() -> Iterator[tuple[str, str, set[str]]]:
    """``(where, program, PARCELO_* variables it is given)`` for each deployment file that sets some."""
    for rendering, objects in RENDERINGS.items():
        for obj in objects():
            for container in containers(obj):
                names = {e["name"] for e in container.get("env", []) if e["name"].startswith("PARCELO_")}
                yield f"k8s-{rendering}-{container['name']}", program(container_argv(container)), names
    # The compose services' env files are written by make-tokens.sh: the variables it writes.
    script = (DEPLOY / "make-tokens.sh").read_text()
    written = set(re.findall(r'echo "(PARCELO_\w+)=', script))
    for service in ("worker", "parcelo"):
        argv = service_argv(load_compose()["services"][service])
        yield f"compose-{service}-env-file", program(argv), written
    for name in ("parcelo-coordinator.service", "parcelo-worker@.service"):
        argv, env = unit(DEPLOY / name)
        yield f"systemd-{name.split('.')[0]}", program(argv), set(env)


COMMAND_LINES = dict(command_lines())
ENVIRONMENTS = {where: (prog, names) for where, prog, names in environments()}


@pytest.mark.parametrize("where", sorted(COMMAND_LINES))
def test_every_flag_exists_on_the_real_command(where: str) -> None:
    argv = COMMAND_LINES[where]
    assert program(argv) in SCRIPTS, f"{where}: {argv[0]} is not a console script of pyproject.toml"
    assert unknown_flags(COMMANDS[program(argv)], argv) == []


@pytest.mark.parametrize("where", sorted(ENVIRONMENTS))
def test_every_parcelo_variable_is_read_by_the_command(where: str) -> None:
    prog, names = ENVIRONMENTS[where]
    assert names - envvars(COMMANDS[prog]) == set()


def test_the_entry_points_are_the_installed_console_scripts() -> None:
    """What the image runs is what pip installs: [project.scripts], as installed, and they start."""
    assert set(COMMANDS) == set(SCRIPTS)
    entry_points = [
        ep for ep in importlib.metadata.distribution("parcelo").entry_points if ep.group == "console_scripts"
    ]
    assert {ep.name: ep.value for ep in entry_points} == SCRIPTS
    for ep in entry_points:
        # Each runs the command checked above: itself, or (parcelo.cli:main) its module's group.
        target = ep.load()
        assert COMMANDS[ep.name] in (target, getattr(sys.modules[target.__module__], "cli", None))
    for name in sorted({program(argv) for argv in COMMAND_LINES.values()}):
        assert (BIN / name).is_file(), f"{name} is not installed in {BIN}"
        result = subprocess.run([str(BIN / name), "--help"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Usage: {name}")


# -- the Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_builds_the_compiled_wheel_in_a_stage_of_its_own() -> None:
    global_args, (*builders, final) = stages(DOCKERFILE)
    assert builders, "multi-stage: the compiler stays out of the image"
    assert global_args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert {stage.base for stage in [*builders, final]} == {"python:3.11-slim"}
    build = " ".join(builders[-1].all("RUN"))
    for needed in ("gcc", "PARCELO_COMPILE=1", "--no-build-isolation", "mypy"):
        assert needed in build, f"the build stage lacks {needed}"
    # The final stage takes the wheels from the build stage and never compiles.
    install = " ".join(final.all("RUN"))
    assert f"from={builders[-1].name}" in install and "--no-index" in install
    assert "gcc" not in install and "apt-get install" not in install


def test_dockerfile_final_stage_runs_unprivileged_with_a_volume_and_a_healthcheck() -> None:
    _, (*_, final) = stages(DOCKERFILE)
    user = final.last("USER")
    assert user is not None and user.split(":")[0] == str(IMAGE_UID), "a numeric non-root user"
    env = {k: v for value in final.all("ENV") for k, v in key_values(value).items()}
    volumes = [v for value in final.all("VOLUME") for v in exec_form(value)]
    assert any(env["PARCELO_DATA_DIR"].startswith(v + "/") for v in volumes), "the data dir is on a volume"
    assert {"50051", "50052"} <= set(" ".join(final.all("EXPOSE")).split())
    check = healthcheck_argv(final)
    assert program(check) == "parcelo" and "health" in check
    assert program(exec_form(final.last("CMD") or "[]")) == "parcelo-coordinator"
    assert final.last("ENTRYPOINT") is None, "no entry point: manifests name the program they run"


@pytest.mark.parametrize("path", [DOCKERFILE, WORKER_EXAMPLE / "Dockerfile"], ids=["image", "worker-example"])
def test_dockerfiles_hold_no_secrets(path: Path) -> None:
    global_args, found = stages(path)
    pairs = dict(global_args)
    for stage in found:
        for value in [*stage.all("ENV"), *stage.all("ARG")]:
            pairs.update(key_values(value))
        for value in [*stage.all("COPY"), *stage.all("ADD")]:
            assert "secrets" not in value and ".env" not in value, value
    for name, value in pairs.items():
        assert not SECRET_NAME.search(name), f"{path.name}: {name} looks like a secret"
        assert not SECRET_VALUE.search(value), f"{path.name}: the value of {name} looks like a secret"


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first, so no new file reaches the context by default"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    _, (*builders, _) = stages(DOCKERFILE)
    copied = {
        source.rstrip("/")
        for stage in builders
        for value in stage.all("COPY")
        for source in value.split()[:-1]
    }
    assert copied == allowed


def test_worker_example_derives_the_image_and_runs_its_handler() -> None:
    global_args, [stage] = stages(WORKER_EXAMPLE / "Dockerfile")
    assert stage.base == global_args["PARCELO_IMAGE"] and stage.base.startswith("parcelo:")
    user = stage.last("USER")
    assert user is not None and user.split(":")[0] == str(IMAGE_UID)
    assert stage.last("HEALTHCHECK") == "NONE", "the coordinator's health check does not apply to a worker"
    argv = exec_form(stage.last("CMD") or "[]")
    assert program(argv) == "parcelo-worker"
    sys.path.insert(0, str(WORKER_EXAMPLE))
    try:
        handler = load(flag_value(argv, "--handler"))
    finally:
        sys.path.remove(str(WORKER_EXAMPLE))
    assert callable(handler)


# -- Kubernetes ----------------------------------------------------------------------------------


CUSTOM_KINDS = frozenset({"ScaledObject"})
"""Kinds whose schema is a CRD's, not Kubernetes' own (validated against the vendored CRD below)."""


def kubernetes_objects() -> dict[str, Manifest]:
    return {
        f"{rendering}-{obj['kind']}": obj
        for rendering, objects in RENDERINGS.items()
        for obj in objects()
        if obj["kind"] not in CUSTOM_KINDS
    }


KUBERNETES_OBJECTS = kubernetes_objects()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("where", sorted(KUBERNETES_OBJECTS))
def test_manifests_are_valid_kubernetes_objects(where: str, version: str) -> None:
    kubernetes_validate.validate(KUBERNETES_OBJECTS[where], version, strict=True)


def test_base_and_overlay_hold_the_expected_objects() -> None:
    expected = ["Deployment", "PodDisruptionBudget", "ScaledObject", "Service", "StatefulSet"]
    assert sorted(o["kind"] for o in base()) == expected
    assert sorted(o["kind"] for o in overlay()) == expected
    assert all(o["metadata"]["namespace"] == "parcelo" for o in overlay())


def strict(schema: Any) -> Any:
    """An OpenAPI schema of a CRD, with unknown fields refused where the API server would prune them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_scaled_object_is_valid_against_the_keda_crd(rendering: str) -> None:
    crd = load_one(SCHEMAS / "keda.sh_scaledobjects.yaml")
    scaled = by_kind(RENDERINGS[rendering](), "ScaledObject")
    [version] = crd["spec"]["versions"]
    assert scaled["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert scaled["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"])).validate(scaled)
    spec = scaled["spec"]
    # The CRD's one CEL rule, which a JSON schema cannot say.
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        assert set(trigger["metadata"]) <= KEDA_PROMETHEUS_METADATA


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_workers_scale_from_zero_on_the_coordinators_queue_gauges(rendering: str) -> None:
    objects = RENDERINGS[rendering]()
    workers = by_kind(objects, "Deployment")
    spec = by_kind(objects, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"]["name"] == workers["metadata"]["name"]
    assert spec["minReplicaCount"] == 0
    assert "replicas" not in workers["spec"], "the autoscaler owns the replica count"
    [trigger] = spec["triggers"]
    query = trigger["metadata"]["query"]
    telemetry = (ROOT / "coordinator" / "telemetry.py").read_text()
    metrics = set(re.findall(r"parcelo_\w+", query))
    assert "parcelo_pending_leaves" in metrics
    assert all(f'"{m}"' in telemetry for m in metrics), f"{metrics}: not all exported by the coordinator"
    # One replica per leaves one worker keeps in hand: its concurrency plus its prefetch.
    [worker] = containers(workers)
    argv = container_argv(worker)
    in_hand = int(flag_value(argv, "--concurrency")) + int(flag_value(argv, "--prefetch"))
    assert float(trigger["metadata"]["threshold"]) == in_hand


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_coordinator_keeps_its_volume_probes_health_and_outlives_its_grace(rendering: str) -> None:
    objects = RENDERINGS[rendering]()
    coordinator = by_kind(objects, "StatefulSet")
    spec = coordinator["spec"]
    assert spec["replicas"] == 1, "one coordinator per data dir"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    [claim] = spec["volumeClaimTemplates"]
    [container] = containers(coordinator)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = next(e["value"] for e in container["env"] if e["name"] == "PARCELO_DATA_DIR")
    assert data_dir.startswith(mounts[claim["metadata"]["name"]] + "/")
    argv = container_argv(container)
    port = int(flag_value(argv, "--listen").rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, f"{probe} asks the gRPC health service"
    # Stopping takes up to twice --grace (calls finish, then the last write).
    pod = pod_spec(coordinator)
    assert pod is not None
    assert pod["terminationGracePeriodSeconds"] > 2 * float(flag_value(argv, "--grace"))
    pdb = by_kind(objects, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    service = by_kind(objects, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert spec["serviceName"] == service["metadata"]["name"]
    assert port in [p["port"] for p in service["spec"]["ports"]]
    # Prometheus finds /metrics of the HTTP port by the pod's annotations, without a token.
    http = int(flag_value(argv, "--http-listen").rsplit(":", 1)[1])
    annotations = spec["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(http), "/metrics")
    assert "--public-metrics" in argv
    assert http in [p["containerPort"] for p in container["ports"]]
    assert http in [p["port"] for p in service["spec"]["ports"]]
    # Workers reach it by the Service's name, and drain within their grace period.
    workers = by_kind(objects, "Deployment")
    [worker] = containers(workers)
    worker_argv = container_argv(worker)
    assert flag_value(worker_argv, "--target") == f"{service['metadata']['name']}:{port}"
    worker_pod = pod_spec(workers)
    assert worker_pod is not None
    assert worker_pod["terminationGracePeriodSeconds"] > float(flag_value(worker_argv, "--drain-timeout"))


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_pods_run_unprivileged_and_secrets_come_from_secrets(rendering: str) -> None:
    for obj in RENDERINGS[rendering]():
        pod = pod_spec(obj)
        if pod is None:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID
        for container in containers(obj):
            assert not container["image"].endswith(":latest") and ":" in container["image"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "valueFrom" in env and "secretKeyRef" in env["valueFrom"], env["name"]
        assert all(v.get("secret", {}).get("secretName") != "" for v in pod.get("volumes", []))
    assert not [o for o in RENDERINGS[rendering]() if o["kind"] == "Secret"], "Secrets are made by hand"


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def listen_addresses() -> Iterator[tuple[str, str, list[str]]]:
    """``(where, listen address, argv)`` of every coordinator the deployment files start."""
    units = {f"systemd-{n.split('.')[0]}": unit(DEPLOY / n)[1] for n in ("parcelo-coordinator.service",)}
    for where, argv in COMMAND_LINES.items():
        if program(argv) != "parcelo-coordinator":
            continue
        try:
            address = flag_value(argv, "--listen")
        except AssertionError:
            address = units.get(where, {}).get("PARCELO_LISTEN", defaults.DEFAULT_LISTEN)
        yield where, address, argv


LISTENERS = {where: (address, argv) for where, address, argv in listen_addresses()}


@pytest.mark.parametrize("where", sorted(LISTENERS))
def test_a_coordinator_listening_beyond_loopback_authenticates_its_callers(where: str) -> None:
    """The coordinator's own rule, so that no deployment file is refused at start."""
    address, argv = LISTENERS[where]
    if is_loopback(address):
        return
    flags = {arg.split("=", 1)[0] for arg in argv}
    assert flags & {"--auth-tokens", "--tls-client-ca"}, (
        f"{where}: {address} without tokens or client certificates"
    )


def test_overlay_runs_the_derived_worker_image_and_its_handler() -> None:
    [worker] = containers(by_kind(overlay(), "Deployment"))
    [coordinator] = containers(by_kind(overlay(), "StatefulSet"))
    assert coordinator["image"] == "registry.example.com/parcelo:0.1.0"
    assert worker["image"] == "registry.example.com/myjobs-worker:1.0"
    _, [stage] = stages(WORKER_EXAMPLE / "Dockerfile")
    example = exec_form(stage.last("CMD") or "[]")
    assert flag_value(container_argv(worker), "--handler") == flag_value(example, "--handler")


# -- compose -------------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    import json

    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    # The schema says draft-07 (as "https://json-schema.org/draft-07/schema", a spelling
    # jsonschema does not look up by itself).
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    for env in ({}, {"PARCELO_IMAGE": "registry.example.com/parcelo:0.1.0"}):
        jsonschema.Draft7Validator(schema).validate(load_compose(env))


def test_compose_runs_a_coordinator_three_workers_and_prometheus() -> None:
    compose = load_compose()
    services = compose["services"]
    coordinator, worker = services["coordinator"], services["worker"]
    argv = service_argv(coordinator)
    port = int(flag_value(argv, "--listen").rsplit(":", 1)[1])
    http = int(flag_value(argv, "--http-listen").rsplit(":", 1)[1])
    assert "--public-metrics" in argv, "Prometheus scrapes without a token"
    assert seconds(coordinator["stop_grace_period"]) > 2 * float(flag_value(argv, "--grace"))
    [volume] = coordinator["volumes"]
    assert volume.split(":")[0] in compose["volumes"] and volume.split(":")[1] == "/var/lib/parcelo"
    assert worker["deploy"]["replicas"] == 3
    worker_argv = service_argv(worker)
    assert flag_value(worker_argv, "--target") == f"coordinator:{port}"
    assert seconds(worker["stop_grace_period"]) > float(flag_value(worker_argv, "--drain-timeout"))
    assert worker["depends_on"]["coordinator"]["condition"] == "service_healthy"
    assert worker["healthcheck"] == {"disable": True}
    assert "build" in coordinator and coordinator["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    prometheus = load_one(DEPLOY / "prometheus.yml")
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"coordinator:{http}"]
    assert f"127.0.0.1:{http}:{http}" in coordinator["ports"], "the dashboard on this host only"
    mounted = [v for v in services["prometheus"]["volumes"] if v.startswith("./prometheus.yml:")]
    assert mounted, "Prometheus reads deploy/prometheus.yml"


def test_compose_secrets_are_files_kept_out_of_git_and_the_image() -> None:
    compose = load_compose()
    files = [s["file"] for s in compose["secrets"].values()]
    files += [e["path"] for s in compose["services"].values() for e in s.get("env_file", [])]
    assert files and all(f.startswith("./secrets/") for f in files)
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text().split()
    for service in compose["services"].values():
        for text in iter_strings(service.get("environment", {})):
            assert not SECRET_NAME.search(text), f"{text}: secrets go in files, not in the compose file"
    coordinator = service_argv(compose["services"]["coordinator"])
    name = flag_value(coordinator, "--auth-tokens").removeprefix("/run/secrets/")
    assert name in compose["secrets"] and name in compose["services"]["coordinator"]["secrets"]


def test_make_tokens_writes_digests_for_the_coordinator_and_tokens_for_the_clients(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    script = str(DEPLOY / "make-tokens.sh")
    made = subprocess.run(["bash", script, str(out)], capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    roles = {}
    for line in (out / "tokens").read_text().splitlines():
        if line and not line.startswith("#"):
            role, token = line.split()
            roles[role] = token
    for role, env in (("worker", "worker.env"), ("admin", "admin.env")):
        name, _, token = (out / env).read_text().strip().partition("=")
        assert name == "PARCELO_TOKEN" and len(token) >= 40
        assert roles[role] == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        assert (out / env).stat().st_mode & 0o077 == 0, "client tokens are private"
    assert set(roles) == {"worker", "admin"}
    again = subprocess.run(["bash", script, str(out)], capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "exists" in again.stderr


def test_docs_make_the_secrets_the_manifests_read() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    wanted = {
        v["secret"]["secretName"]
        for o in base()
        for v in (pod_spec(o) or {}).get("volumes", [])
        if "secret" in v
    }
    wanted |= {
        e["valueFrom"]["secretKeyRef"]["name"]
        for o in base()
        for c in containers(o)
        for e in c.get("env", [])
        if "valueFrom" in e
    }
    assert wanted == {"parcelo-auth", "parcelo-worker-token"}
    for name in wanted:
        assert re.search(rf"kubectl (-n \S+ )?create secret generic {name} ", docs), name


def test_schema_sources_are_recorded() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    for path in sorted(SCHEMAS.iterdir()):
        if path.name != "README.md":
            assert path.name in readme, f"{path.name}: say where it comes from in tests/schemas/README.md"


def test_yaml_files_parse() -> None:
    for path in sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml")):
        assert load_all(path), path
    assert os.access(DEPLOY / "make-tokens.sh", os.X_OK)
    assert yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
