"""docs/deployment.md against compose.yaml and the code, without a Docker engine: the services, files and images
it names exist, the worker image and compose override it shows would run (their command parses as the worker's
options, their variables are jetdag's settings, their NATS address, seed and volume are the stack's), and, when
the `docker compose` client is installed, `docker compose config` accepts compose.yaml with that override."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.worker.options import parse_args
from shared.settings import all_settings_classes
from tests.docs import blocks, prose
from tests.helpers import ROOT
from tests.test_compose import environment, services

DOC = ROOT / "docs" / "deployment.md"
BLOCKS = blocks(DOC)
SETTINGS = {f.metadata["env"] for cls in all_settings_classes() for f in dataclasses.fields(cls)}


def override() -> dict[str, dict[str, object]]:
    data = yaml.safe_load("\n".join(BLOCKS["jobs-override"].lines))
    found: dict[str, dict[str, object]] = data["services"]
    return found


def test_the_services_the_page_names_exist() -> None:
    text = DOC.read_text()
    names = set(services()) | set(override())
    for name in re.findall(r"--scale ([a-z-]+)=\d+", text) + re.findall(r"docker compose logs -f ([a-z-]+)", text):
        assert name in names, f"deployment.md scales or reads a service {name!r} that compose.yaml does not have"
    table = [line.split("|")[1].strip().strip("`") for line in prose(text).splitlines() if line.startswith("| `")]
    assert sorted(table) == sorted(services()), "the containers table lists exactly compose.yaml's services"
    assert services()["worker"]["deploy"]["replicas"] == 2  # "two workers"


def test_the_worker_image_runs_the_worker_with_its_modules() -> None:
    lines = [line.split(" ", 1) for line in BLOCKS["jobs-dockerfile"].lines if line.strip()]
    instructions = {word: rest for word, rest in lines}
    assert instructions["FROM"] == services()["registry"]["image"] == "jetdag:latest"
    cmd = yaml.safe_load(instructions["CMD"])
    assert cmd[:2] == ["jetdag", "worker"]
    options = parse_args(cmd[2:])
    assert options.handler_modules == ("my_jobs",) and options.capabilities == ("cpu", "gpu")
    assert instructions["COPY"].split()[-1] == "/home/jetdag/"  # the image's WORKDIR: the module is found there


def test_the_override_service_connects_like_the_stack_workers() -> None:
    svc = override()["gpu-worker"]
    env = environment("gpu-worker", svc)
    assert set(env) <= SETTINGS, f"unknown variables: {set(env) - SETTINGS}"
    worker = services()["worker"]
    assert {k: env[k] for k in ("NATS_URL", "JETDAG_NAMESPACE", "NATS_NKEY")} == {
        k: environment("worker", worker)[k] for k in ("NATS_URL", "JETDAG_NAMESPACE", "NATS_NKEY")
    }
    assert svc["volumes"] == worker["volumes"] and svc["depends_on"] == worker["depends_on"]
    assert svc["restart"] == worker["restart"]


def docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    return None


def test_docker_compose_config_accepts_the_file_and_the_override(tmp_path: Path) -> None:
    client = docker_compose()
    if client is None:
        pytest.skip("no `docker compose` client here (the checks above run without one)")
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    (tmp_path / "compose.override.yaml").write_text("\n".join(BLOCKS["jobs-override"].lines))
    proc = subprocess.run([*client, "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
