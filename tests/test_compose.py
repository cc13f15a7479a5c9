"""compose.yaml and the Dockerfile stay in step with the code, checked without a Docker engine.

No test here calls `docker` (there is no engine in CI): compose.yaml is parsed with PyYAML (anchors and merge
keys resolve as compose resolves them) and compared with what `jetdag up` starts (`stack_specs`), with the
settings variables, and with the importable service modules.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from jetdag.launcher import stack_specs
from jetdag.natsauth import seed_path
from services.gateway.auth import AuthPolicy
from shared.settings import GatewaySettings, SettingsError, WorkerSettings, all_settings_classes, load

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

NATS_SERVICE = "nats"
AUTH_SERVICE = "nats-auth"
MIN_NATS = (2, 11)  # consumer pause
# Keys compose accepts at the top level; `x-*` extension fields (our anchors) are ignored by compose.
TOP_LEVEL_KEYS = {"version", "name", "services", "volumes", "networks", "configs", "secrets", "include"}


def compose() -> dict[str, Any]:
    assert COMPOSE.is_file(), f"{COMPOSE} is missing"
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "compose.yaml must be a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose().get("services")
    assert isinstance(found, dict) and found, "compose.yaml has no services"
    return found


def jetdag_services() -> dict[str, dict[str, Any]]:
    """The services `jetdag up` runs too (all but nats and the one-shot that writes its credentials)."""
    return {name: svc for name, svc in services().items() if name not in (NATS_SERVICE, AUTH_SERVICE)}


def command(name: str, svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    assert isinstance(cmd, list) and cmd, f"service {name!r}: command must be a non-empty list"
    assert all(isinstance(part, str) for part in cmd), f"service {name!r}: every command part must be a string"
    return cmd


def environment(name: str, svc: dict[str, Any]) -> dict[str, str]:
    """The service's environment as a dict, whether compose.yaml writes it as a mapping or as `K=V` items."""
    env = svc.get("environment", {})
    if isinstance(env, list):
        pairs = [str(item).split("=", 1) for item in env]
        return {kv[0]: kv[1] if len(kv) == 2 else "" for kv in pairs}
    assert isinstance(env, dict), f"service {name!r}: environment must be a mapping or a list"
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def settings_variables() -> set[str]:
    return {f.metadata["env"] for cls in all_settings_classes() for f in dataclasses.fields(cls)}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and `\\` continuations joined."""
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        word, _, rest = stripped.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_every_service_module_is_importable_and_runnable() -> None:
    for name, svc in jetdag_services().items():
        cmd = command(name, svc)
        assert cmd[:2] == ["python", "-m"] and len(cmd) > 2, (
            f"service {name!r}: command must be ['python', '-m', 'services.<name>', ...], got {cmd}"
        )
        module = cmd[2]
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"service {name!r}: module {module!r} is not importable"
        assert spec.submodule_search_locations is not None, (
            f"service {name!r}: {module!r} is not a package, so `python -m {module}` has no __main__ to run"
        )
        assert importlib.util.find_spec(f"{module}.__main__") is not None, (
            f"service {name!r}: {module!r} has no __main__, so `python -m {module}` cannot run it"
        )


def test_services_mirror_jetdag_up() -> None:
    """The same services with the same commands; `jetdag up`'s N workers are the `worker` service's N replicas
    (their ids come from the containers' hostnames, so the service names none)."""
    specs = stack_specs(2)
    workers = [spec for spec in specs if spec.argv[1:3] == ["-m", "services.worker"]]
    expected = {spec.name: spec.argv[1:] for spec in specs if spec not in workers}
    expected["worker"] = ["-m", "services.worker"]
    assert all(spec.argv[3:] == ["--id", f"local-worker-{i}"] for i, spec in enumerate(workers, 1)), workers
    actual = {name: command(name, svc)[1:] for name, svc in jetdag_services().items()}
    assert set(actual) == set(expected), (
        f"compose.yaml services {sorted(actual)} differ from what `jetdag up` starts {sorted(expected)}: "
        f"missing {sorted(set(expected) - set(actual))}, extra {sorted(set(actual) - set(expected))}"
    )
    for name, argv in expected.items():
        assert actual[name] == argv, (
            f"service {name!r}: compose.yaml runs python {actual[name]}, `jetdag up` runs python {argv}"
        )
    assert services()["worker"]["deploy"]["replicas"] == len(workers) == 2


def test_jetdag_services_share_image_wait_for_nats_and_restart() -> None:
    for name, svc in jetdag_services().items():
        assert svc.get("build") in (".", {"context": "."}), f"service {name!r} must be built from the Dockerfile"
        depends = svc.get("depends_on")
        assert isinstance(depends, dict) and depends.get(NATS_SERVICE) == {"condition": "service_healthy"}, (
            f"service {name!r} must depend on nats with condition service_healthy, got {depends!r}"
        )
        assert svc.get("restart") == "unless-stopped", f"service {name!r} must have restart: unless-stopped"


def test_environment_names_only_real_settings() -> None:
    known = settings_variables()
    for name, svc in services().items():
        if name == NATS_SERVICE:
            continue
        unknown = sorted(set(environment(name, svc)) - known)
        assert not unknown, f"service {name!r} sets {unknown}, which no settings class reads (shared/settings.py)"


def test_environment_values_parse_and_point_at_nats() -> None:
    for name, svc in jetdag_services().items():
        env = environment(name, svc)
        assert env.get("NATS_URL") == f"nats://{NATS_SERVICE}:4222", f"service {name!r}: NATS_URL must reach nats"
        for cls in all_settings_classes():
            try:
                load(cls, env)
            except SettingsError as exc:
                pytest.fail(f"service {name!r}: {exc}")


def test_gateway_listens_on_all_interfaces_and_publishes_its_port() -> None:
    gateway = services().get("gateway")
    assert gateway is not None, "compose.yaml has no gateway service"
    env = environment("gateway", gateway)
    assert env.get("JETDAG_HOST") == "0.0.0.0", "gateway: JETDAG_HOST must be 0.0.0.0 to be reachable"
    port = env.get("JETDAG_PORT")
    assert port, "gateway: JETDAG_PORT must be set"
    published = [str(p) for p in gateway.get("ports", [])]
    assert any(p.rsplit(":", 1)[-1] == port for p in published), (
        f"gateway: container port {port} is not published (ports: {published})"
    )


def test_nats_is_recent_enough_with_jetstream_on_a_volume() -> None:
    nats = services().get(NATS_SERVICE)
    assert nats is not None, "compose.yaml has no nats service"
    image = str(nats.get("image", ""))
    repo, _, tag = image.partition(":")
    assert repo in ("nats", "library/nats", "docker.io/library/nats"), f"nats: expected the official image, got {image}"
    match = re.match(r"(\d+)\.(\d+)", tag)
    assert match, f"nats: image {image!r} must pin a version tag (>= {MIN_NATS[0]}.{MIN_NATS[1]})"
    version = (int(match[1]), int(match[2]))
    assert version >= MIN_NATS, f"nats: image {image!r} is older than {MIN_NATS[0]}.{MIN_NATS[1]} (consumer pause)"

    cmd = command(NATS_SERVICE, nats)
    assert "-js" in cmd or "--jetstream" in cmd, f"nats: command {cmd} does not enable JetStream (-js)"
    store_flag = next((f for f in ("-sd", "--store_dir") if f in cmd), None)
    assert store_flag is not None and cmd.index(store_flag) + 1 < len(cmd), f"nats: command {cmd} sets no store dir"
    store = cmd[cmd.index(store_flag) + 1]

    mounts: dict[str, str] = {}
    for volume in nats.get("volumes", []):
        if isinstance(volume, dict):
            mounts[str(volume.get("target"))] = str(volume.get("source"))
        else:
            source, _, rest = str(volume).partition(":")
            mounts[rest.split(":", 1)[0]] = source
    assert store in mounts, f"nats: store dir {store} is not on a volume (mounts: {sorted(mounts)})"
    named = compose().get("volumes") or {}
    assert mounts[store] in named, f"nats: volume {mounts[store]!r} on {store} is not a named volume of compose.yaml"
    assert nats.get("healthcheck", {}).get("test"), "nats: needs a healthcheck (the services wait for it)"


def test_compose_is_consistent_without_docker() -> None:
    """What `docker compose config` would reject, checked here: the tests never need a Docker engine."""
    data = compose()
    unknown = sorted(k for k in data if k not in TOP_LEVEL_KEYS and not str(k).startswith("x-"))
    assert not unknown, f"compose.yaml has unknown top-level keys {unknown}"
    names = set(services())
    named_volumes = set(data.get("volumes") or {})
    for name, svc in services().items():
        assert isinstance(svc, dict), f"service {name!r} must be a mapping"
        # Both is allowed: compose builds and tags the image with that name.
        assert "image" in svc or "build" in svc, f"service {name!r} needs an image or a build"
        for dep in svc.get("depends_on", {}):
            assert dep in names, f"service {name!r} depends on unknown service {dep!r}"
        for volume in svc.get("volumes", []):
            source = volume.get("source") if isinstance(volume, dict) else str(volume).partition(":")[0]
            if source and not str(source).startswith((".", "/", "~")):
                assert source in named_volumes, f"service {name!r} mounts undeclared volume {source!r}"
        build = svc.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (ROOT / context / "Dockerfile").is_file(), f"service {name!r}: no Dockerfile in {context!r}"


def test_dockerfile_installs_the_project() -> None:
    steps = dockerfile_instructions()
    assert steps and steps[0][0] == "FROM", "Dockerfile must start with FROM"
    assert steps[0][1].startswith("python:3.11"), f"Dockerfile base must be python:3.11, got {steps[0][1]}"

    copied = " ".join(args for word, args in steps if word in ("COPY", "ADD"))
    copies_all = re.search(r"(^|\s)\.\s", copied) is not None
    for needed in ("pyproject.toml", "README.md", "shared", "services", "jetdag"):
        assert copies_all or needed in copied, f"Dockerfile does not copy {needed} (pip install . needs it)"

    runs = [args for word, args in steps if word == "RUN"]
    installs = [r for r in runs if re.search(r"pip install\b.*\s\.(\s|$)", r)]
    assert installs, "Dockerfile never runs `pip install .`"
    assert not any(re.search(r"\s(-e|--editable)\s", r) for r in installs), "Dockerfile must install non-editable"

    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "Dockerfile must run as a non-root user"

    env_text = " ".join(args for word, args in steps if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env_text, "Dockerfile must set PYTHONUNBUFFERED=1"
    jetdag_vars = set(re.findall(r"\b(JETDAG_\w+|NATS_\w+)=", env_text))
    unknown = sorted(jetdag_vars - settings_variables())
    assert not unknown, f"Dockerfile sets {unknown}, which no settings class reads"

    assert DOCKERIGNORE.is_file(), ".dockerignore is missing"
    ignored = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for entry in (".venv", ".git", ".jetdag"):
        assert entry in ignored, f".dockerignore must exclude {entry}"


def mounts(svc: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target → (source, read-only) of a service's volumes."""
    out = {}
    for volume in svc.get("volumes", []):
        source, target, *mode = str(volume).split(":")
        out[target] = (source, mode == ["ro"])
    return out


def test_only_loopback_ports_are_published() -> None:
    """Issue 11: 4222, 8222 and 8000 were published on every interface, unauthenticated."""
    for name, svc in services().items():
        for port in svc.get("ports", []):
            host, _, rest = str(port).partition(":")
            assert host == "127.0.0.1" and ":" in rest, f"service {name!r} publishes {port} beyond loopback"
    assert all(not str(p).endswith(":8222") for p in services()[NATS_SERVICE].get("ports", [])), "monitoring published"


def test_nats_runs_with_the_generated_authorization_and_each_service_with_its_role() -> None:
    auth, nats = services()[AUTH_SERVICE], services()[NATS_SERVICE]
    cmd = command(AUTH_SERVICE, auth)
    assert cmd[:2] == ["jetdag", "nats-config"], cmd
    seeds, block = Path(cmd[cmd.index("--dir") + 1]), Path(cmd[cmd.index("--out") + 1])
    volume, read_only = mounts(auth)[str(block.parent)]
    assert not read_only and seeds.parent == block.parent, "nats-auth writes seeds and block into its volume"
    # nats loads the block from the same volume, and starts only once it was written.
    nats_cmd = command(NATS_SERVICE, nats)
    loaded = Path(nats_cmd[nats_cmd.index("-c") + 1])
    assert mounts(nats)[str(loaded.parent)] == (volume, True) and loaded.name == block.name
    assert nats["depends_on"][AUTH_SERVICE] == {"condition": "service_completed_successfully"}
    # Every service: the seed of the role `jetdag up` gives it, from that volume, read-only.
    roles = {spec.name.removesuffix("-1"): spec.role for spec in stack_specs(2)}
    for name, svc in jetdag_services().items():
        role = roles[name]
        assert role is not None
        assert environment(name, svc).get("NATS_NKEY") == str(seed_path(seeds, role)), name
        assert mounts(svc)[str(block.parent)] == (volume, True), name
    assert (
        environment(AUTH_SERVICE, auth).get("JETDAG_NAMESPACE")
        == environment("registry", services()["registry"])["JETDAG_NAMESPACE"]
    ), "the block must be written for the namespace the services use"


def test_compose_lets_a_stopped_worker_finish_its_grace() -> None:
    """Compose SIGKILLs a container 10 s after SIGTERM unless told otherwise; a worker's running jobs get
    JETDAG_WORKER_GRACE_S to finish, so the wait must be longer (as TimeoutStopSec is in the systemd units)."""
    worker = services()["worker"]
    period = str(worker["stop_grace_period"])
    assert period.endswith("s") and float(period[:-1]) > WorkerSettings().shutdown_grace_s, period


def test_the_gateway_would_start_with_its_settings() -> None:
    env = environment("gateway", services()["gateway"])
    AuthPolicy.from_settings(load(GatewaySettings, env))  # raises for an exposed gateway without tokens
