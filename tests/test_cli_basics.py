"""The `jetdag` command's own parsing (issue 10 items 11 and 14): every subcommand has --help that starts
nothing, `jetdag settings` shows the values in effect and survives a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import base_env
from tests.helpers import ROOT

JETDAG = str(Path(sys.executable).parent / "jetdag")  # the console script users run


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JETDAG, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETDAG_", "NATS_"))}
    env.update(extra)
    return env


def test_up_help_explains_and_starts_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Ports that nothing may bind: if --help started the stack, the data dir would appear.
    result = run("up", "--help", env=clean_env(JETDAG_DATA_DIR=str(data)), timeout=20)
    assert result.returncode == 0, result.stderr
    assert "Usage: jetdag up" in result.stdout
    assert "embedded nats-server" in result.stdout
    assert not data.exists(), "jetdag up --help created the data dir: it started the stack"


def test_up_rejects_an_unknown_option(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run("up", "--bogus", env=clean_env(JETDAG_DATA_DIR=str(data)), timeout=20)
    assert result.returncode == 2
    assert "No such option" in result.stderr and "--bogus" in result.stderr
    assert not data.exists()


@pytest.mark.parametrize("command", ["registry", "scheduler", "gateway"])
def test_service_commands_have_help_and_start_nothing(command: str) -> None:
    # NATS_URL at a port where nothing listens: a service that started would wait there, not exit 0.
    result = run(command, "--help", env=clean_env(NATS_URL="nats://127.0.0.1:1"), timeout=20)
    assert result.returncode == 0, result.stderr
    assert f"Usage: jetdag {command}" in result.stdout


def test_worker_keeps_its_options() -> None:
    result = run("worker", "--help", env=clean_env(NATS_URL="nats://127.0.0.1:1"), timeout=20)
    assert result.returncode == 0, result.stderr
    for option in ("--capabilities", "--concurrency", "--grace", "--id", "handler_modules"):
        assert option in result.stdout
    bad = run("worker", "--concurrency", "0", env=clean_env(NATS_URL="nats://127.0.0.1:1"), timeout=20)
    assert bad.returncode == 2 and "--concurrency must be at least 1" in bad.stderr


def test_top_level_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("up", "worker", "settings", "registry", "scheduler", "gateway"):
        assert f"  {command}" in result.stdout
    unknown = run("frobnicate")
    assert unknown.returncode == 2 and "No such command" in unknown.stderr and "frobnicate" in unknown.stderr


def test_settings_shows_the_values_in_effect_beside_the_defaults() -> None:
    result = run("settings", env=clean_env(JETDAG_PORT="9100", NATS_PASSWORD="hunter2"))
    assert result.returncode == 0, result.stderr
    port = next(line for line in result.stdout.splitlines() if "JETDAG_PORT " in line or "JETDAG_PORT|" in line)
    assert "9100" in port and "8000" in port, port
    assert "hunter2" not in result.stdout, "a secret was printed"
    password = next(line for line in result.stdout.splitlines() if "NATS_PASSWORD" in line)
    assert "(set)" in password
    namespace = next(line for line in result.stdout.splitlines() if "JETDAG_NAMESPACE" in line)
    assert namespace.count("jetdag") >= 2  # in effect and default


def test_settings_names_an_invalid_value() -> None:
    result = run("settings", env=clean_env(JETDAG_PORT="http"))
    assert result.returncode == 2
    assert "JETDAG_PORT must be an integer, got 'http'" in result.stdout + result.stderr


def test_settings_markdown_is_the_readme_table() -> None:
    from shared.settings import markdown_table

    result = run("settings", "--markdown", env=clean_env(JETDAG_PORT="9100"))
    assert result.returncode == 0
    assert result.stdout.strip() == markdown_table()


def test_settings_into_a_closed_pipe_is_quiet() -> None:
    """`jetdag settings | head`: the reader is gone before we write; no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)  # every write now fails with EPIPE, deterministically
    try:
        proc = subprocess.run(
            [JETDAG, "settings"], cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True, timeout=30, check=False
        )
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1, 141)


def test_settings_into_head_is_quiet() -> None:
    proc = subprocess.run(
        ["bash", "-c", f"{JETDAG} settings | head -n 2"],
        cwd=ROOT,
        env=base_env("nats://127.0.0.1:1", "jetdag"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr, proc.stderr


def test_validate_checks_files_locally(tmp_path: Path) -> None:
    ok = run("validate", "examples/hello.yaml", env=clean_env())
    assert ok.returncode == 0 and "examples/hello.yaml: ok (hello, 5 jobs)" in ok.stdout
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("workflowId: wf\njobs:\n  - id: train\n    type: train\n    dependsOn: [prepocess]\n")
    result = run("validate", str(bad), env=clean_env())
    assert result.returncode == 2
    assert result.stderr.strip() == f'{bad}:5: job "train" depends on "prepocess", which is not defined'
