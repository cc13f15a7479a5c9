"""`jetdag worker MODULE`: the README's handler example, run the way its reader runs it (issue 10 item 13)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from jetdag.natsserver import free_port
from tests.api import job, jobs, submit, wait_final
from tests.conftest import Stack, base_env
from tests.helpers import ServiceProcess

JETDAG = str(Path(sys.executable).parent / "jetdag")  # the console script the README runs

MY_JOBS = """
from jetdag.worker import JobContext, handler


@handler("resize")
async def resize(ctx: JobContext) -> dict:
    return {"path": f"/out/{ctx.config['size']}.png"}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


async def module_worker(stack: Stack, home: Path, worker_id: str, module: str) -> ServiceProcess:
    """`jetdag worker MODULE --id WORKER_ID` run from `home`, the way the README's reader runs it."""
    proc = ServiceProcess(worker_id, [JETDAG, "worker", module, "--id", worker_id], stack.env(), stack.log_dir, home)
    stack.procs.append(proc)
    return await proc.start().wait_ready()


async def test_readme_handler_module_from_the_current_directory_and_as_a_file(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    await stack.up()
    home = tmp_path / "home"
    write(home, "my_jobs.py", MY_JOBS)
    write(
        home / "sub",
        "other_jobs.py",
        MY_JOBS.replace("resize", "crop").replace("from jetdag", "import helper\nfrom jetdag"),
    )
    write(home / "sub", "helper.py", "")  # a neighbour the file imports: its folder is on the path
    await module_worker(stack, home, "by-name", "my_jobs")
    await module_worker(stack, home, "by-path", "./sub/other_jobs.py")
    execution = await submit(
        http,
        stack.url,
        [job("r", "resize", config={"size": 64}), job("c", "crop", config={"size": 32})],
    )
    final = await wait_final(http, stack.url, execution)
    assert final["status"] == "completed", final


def run_worker(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # NATS is unreachable: a worker that got as far as connecting would wait there, not exit.
    env = base_env(f"nats://127.0.0.1:{free_port()}", "nomodule")
    return subprocess.run(
        [JETDAG, "worker", *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )


def test_a_handler_module_that_does_not_load_is_one_line_and_exit_2(tmp_path: Path) -> None:
    write(tmp_path, "broken.py", "import not_installed_anywhere\n")
    write(tmp_path, "typo.py", "x = (\n")
    cases = {
        ("my_jobz",): (
            f"jetdag worker: no module named 'my_jobz' in {tmp_path} or on the Python path "
            "(a file works too: jetdag worker ./my_jobz.py)"
        ),
        ("./nothere.py",): "jetdag worker: no such file: ./nothere.py",
        ("broken",): (
            "jetdag worker: importing broken failed: ModuleNotFoundError: No module named 'not_installed_anywhere' "
            "(broken.py line 1)"
        ),
        ("./typo.py",): "jetdag worker: importing ./typo.py failed: SyntaxError: '(' was never closed (typo.py line 1)",
    }
    for args, expected in cases.items():
        started = time.monotonic()
        result = run_worker(tmp_path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip() == expected, args
        assert result.stdout == ""
        assert time.monotonic() - started < 10


HOOKED = """
from pathlib import Path

from jetdag.worker import JobContext, handler, on_shutdown, on_startup

state = {"startups": 0}


@on_startup
async def load() -> None:
    state["startups"] += 1
    state["model"] = "loaded"


@handler("predict")
async def predict(ctx: JobContext) -> dict:
    return {"model": state["model"], "startups": state["startups"]}


@on_shutdown
def unload() -> None:
    Path("shutdown.txt").write_text("unloaded")
"""


async def test_startup_hooks_run_once_before_any_job_and_shutdown_hooks_after_the_last(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    await stack.up()
    home = tmp_path / "home"
    write(home, "hooked.py", HOOKED)
    worker = await module_worker(stack, home, "hooked", "hooked")
    execution = await submit(http, stack.url, [job("a", "predict"), job("b", "predict", ["a"])])
    assert (await wait_final(http, stack.url, execution))["status"] == "completed"
    listed = await jobs(http, stack.url, execution)
    assert listed["a"]["result"] == listed["b"]["result"] == {"model": "loaded", "startups": 1}
    assert not (home / "shutdown.txt").exists()
    worker.terminate()
    assert (home / "shutdown.txt").read_text() == "unloaded"
