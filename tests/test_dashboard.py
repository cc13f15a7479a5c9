"""The dashboard in a real browser (headless Chromium) against real services, as a person would use it."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.api import job, stats, submit
from tests.chromium import Browser, base, shoot, text_of
from tests.conftest import Stack


async def test_overview_pause_and_resume_from_the_page(
    stack: Stack, http: httpx.AsyncClient, browser: Browser, tmp_path: Path
) -> None:
    await stack.up(workers=1)
    await browser.goto(f"{base(stack)}/")
    await browser.wait("() => document.querySelector('[data-worker-id=\"w1\"]')", message="worker row w1")
    await browser.wait(
        "() => document.querySelectorAll('.component-healthy').length === 4", message="four healthy components"
    )

    # A pause of one job type, from the API, shows live with its reason.
    r = await http.post(f"{stack.url}/queue/pause", json={"type": "sleep", "reason": "deploy"})
    assert r.status_code == 200, r.text
    await browser.wait(
        "() => document.querySelector('[data-pause=\"type sleep\"]')?.textContent.includes('deploy')",
        message="the type pause shown",
    )

    # A finer, timed pause from the page's form; the API's refusal of a bad one is shown and changes nothing.
    await browser.click(".pause-form summary")
    await browser.fill('.pause-form input[name="capability"]', "gpu")
    await browser.fill('.pause-form input[name="minutes"]', "0")
    await browser.click('[data-action="pause-scope"]')
    await browser.wait(
        "() => document.querySelector('.notice-error')?.textContent.includes('durationS')",
        message="the refusal of a 0-minute pause shown",
    )
    assert [p["type"] for p in (await stats(http, stack.url))["pauses"]] == ["sleep"]
    await browser.fill('.pause-form input[name="minutes"]', "10")
    await browser.fill('.pause-form input[name="reason"]', "driver update")
    await browser.click('[data-action="pause-scope"]')
    gpu = '[data-pause="capability gpu"]'
    await browser.wait(
        f"() => document.querySelector('{gpu}')?.textContent.includes('driver update')", message="the gpu pause shown"
    )
    assert "until resumed" not in await browser.eval(text_of(gpu))
    pause = next(p for p in (await stats(http, stack.url))["pauses"] if p["capability"] == "gpu")
    assert pause["type"] is None and pause["reason"] == "driver update" and pause["until"] is not None
    assert await browser.eval("() => document.querySelector('.pause-form input[name=\"capability\"]').value") == ""
    # Its own Resume ends that pause only.
    await browser.click(f'{gpu} [data-action="resume-pause"]')
    await browser.wait(f"() => document.querySelector('{gpu}') === null", message="the gpu pause ended")
    assert [p["type"] for p in (await stats(http, stack.url))["pauses"]] == ["sleep"]

    await browser.click('[data-action="pause-queue"]')
    await browser.wait("() => document.querySelector('[data-queue-paused=\"true\"]')", message="queue shown paused")
    assert (await stats(http, stack.url))["isPaused"] is True

    await submit(http, stack.url, [job(f"j{i}") for i in range(3)])
    await browser.wait(text_of('[data-stat="paused"] dd') + " === '3'", message="3 jobs held by the pause")
    await shoot(browser, "overview", tmp_path)

    await browser.click('[data-action="resume-queue"]')
    await browser.wait("() => document.querySelector('[data-queue-paused=\"false\"]')", message="queue shown resumed")
    await browser.wait(text_of('[data-stat="completed"] dd') + " === '3'", message="the 3 jobs completed")
    # The page's Resume ends every pause, the type's too.
    assert await browser.eval("() => document.querySelector('[data-pause]') === null")
    assert await browser.eval(text_of('[data-stat="paused"] dd')) == "0"
    assert (await stats(http, stack.url))["isPaused"] is False

    # The worker row is live too: its load and status follow its heartbeats.
    row = await browser.eval("() => document.querySelector('[data-worker-id=\"w1\"]').dataset.status")
    assert row in ("idle", "busy")

    # A dropped stream is recovered: the gateway restarts, the page reconnects by itself and is live again.
    # Until then the browser logged one error: the refused 0-minute pause.
    refused = await browser.errors()
    assert len(refused) == 1 and "status of 400" in refused[0] and "/queue/pause" in refused[0], refused
    gateway = next(p for p in stack.procs if p.name == "gateway")
    await gateway.aterminate()
    await browser.wait("() => document.querySelector('[data-stream=\"reconnecting\"]')", message="stream lost")
    await gateway.start().wait_ready()
    r = await http.post(
        f"{stack.url}/workers/register",
        json={"workerId": "rest-1", "hostname": "h", "capabilities": ["cpu"], "maxConcurrency": 2},
    )
    assert r.status_code == 201, r.text
    await browser.wait(
        "() => document.querySelector('[data-worker-id=\"rest-1\"]')", message="new worker after reconnect"
    )
    # While the gateway was down, the browser logged its refused reconnects; nothing else.
    outage = await browser.errors()
    assert all("ERR_CONNECTION_REFUSED" in e and "/overview/events" in e for e in outage), outage


READ_TOKEN = "viewer-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789ab"


async def test_sign_in_with_a_token_and_its_scope_is_enforced(
    stack: Stack, http: httpx.AsyncClient, browser: Browser
) -> None:
    await stack.up(workers=1, JETDAG_API_TOKENS=f"viewer:read:{READ_TOKEN},ops:admin:{ADMIN_TOKEN}")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    await browser.goto(f"{base(stack)}/")
    # The page itself loads without a token; its first request gets 401 and it asks for one.
    await browser.wait("() => document.querySelector('dialog[open] input[type=password]')", message="the token form")
    await browser.fill("dialog[open] input[type=password]", READ_TOKEN)
    await browser.click("dialog[open] button[type=submit]")
    await browser.wait("() => document.querySelector('[data-worker-id=\"w1\"]')", message="the overview, signed in")

    # A read token may look, not steer: the queue stays as it was and the page says why.
    await browser.click('[data-action="pause-queue"]')
    await browser.wait("() => document.querySelector('.notice-error')", message="the refusal shown")
    r = await http.get(f"{stack.url}/queue/stats", headers=admin)
    assert r.json()["isPaused"] is False

    await browser.click('[data-action="sign-in"]')
    await browser.fill("dialog[open] input[type=password]", ADMIN_TOKEN)
    await browser.click("dialog[open] button[type=submit]")
    await browser.wait("() => document.querySelector('[data-worker-id=\"w1\"]')", message="the overview again")
    await browser.click('[data-action="pause-queue"]')
    await browser.wait("() => document.querySelector('[data-queue-paused=\"true\"]')", message="paused by the admin")
    assert (await http.get(f"{stack.url}/queue/stats", headers=admin)).json()["isPaused"] is True

    # The refusals the browser logged are the two expected ones, nothing else.
    logged = await browser.errors()
    assert logged and all("status of 401" in e or "status of 403" in e for e in logged), logged


async def test_schedules_listed_paused_and_run_now_from_the_page(
    stack: Stack, http: httpx.AsyncClient, browser: Browser, tmp_path: Path
) -> None:
    await stack.up(workers=1)
    body = {"scheduleId": "hourly", "everyS": 3600, "workflow": {"workflowId": "wf-hourly", "jobs": [job("a")]}}
    assert (await http.post(f"{stack.url}/schedules", json=body)).status_code == 201
    await browser.goto(f"{base(stack)}/ui/schedules")
    row = '[data-schedule-id="hourly"]'
    await browser.wait(f"() => document.querySelector('{row}')?.dataset.paused === 'false'", message="schedule row")
    assert "every 3,600 s" in await browser.eval(text_of(row))

    # Run now asks first, then starts one execution; the row links it as the last run, live.
    await browser.click(f'{row} [data-action="trigger-schedule"]')
    await browser.click('dialog [data-action="confirm"]')
    await browser.wait(f"() => document.querySelector('{row} a[href^=\"/ui/executions/\"]')", message="last run linked")
    runs = (await http.get(f"{stack.url}/schedules/hourly/runs")).json()["runs"]
    assert [r["trigger"] for r in runs] == ["manual"]
    linked = await browser.eval(f"() => document.querySelector('{row} a[href^=\"/ui/executions/\"]').textContent")
    assert linked == runs[0]["executionId"]

    await browser.click(f'{row} [data-action="pause-schedule"]')
    await browser.wait(f"() => document.querySelector('{row}').dataset.paused === 'true'", message="shown paused")
    assert (await http.get(f"{stack.url}/schedules/hourly")).json()["schedule"]["paused"] is True
    assert await browser.eval(text_of(f"{row} [data-next-run]")) == "\u2013"  # the en dash of "no next run"
    await shoot(browser, "schedules", tmp_path)
    await browser.click(f'{row} [data-action="resume-schedule"]')
    await browser.wait(f"() => document.querySelector('{row}').dataset.paused === 'false'", message="shown resumed")
    assert await browser.errors() == []
