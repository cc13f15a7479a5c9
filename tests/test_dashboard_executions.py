"""The execution pages in a real browser (headless Chromium) against real services: one execution's graph live,
cancel, the list with retry, and a 10,000-job DAG."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.api import FINAL, job, submit
from tests.chromium import Browser, base, shoot, text_of
from tests.conftest import Stack
from tests.helpers import wait_for

NODES = "() => [...document.querySelectorAll('.graph [data-job-id]')].map(n => [n.dataset.jobId, n.dataset.state])"


async def test_diamond_completes_live_without_a_reload(
    stack: Stack, http: httpx.AsyncClient, browser: Browser, tmp_path: Path
) -> None:
    await stack.up(workers=2)
    # Paused, so the page is certain to see the jobs before they run.
    assert (await http.post(f"{stack.url}/queue/pause", json={})).status_code == 200
    sleep = {"seconds": 0.3}
    eid = await submit(
        http,
        stack.url,
        [
            job("a", "sleep", config=sleep),
            job("b", "sleep", ["a"], config=sleep),
            job("c", "noop", ["a"]),
            job("d", "noop", ["b", "c"]),
        ],
    )
    await browser.goto(f"{base(stack)}/ui/executions/{eid}")
    await browser.wait(f"() => ({NODES})().length === 4", message="four nodes")
    before = dict(await browser.eval(NODES))
    assert set(before) == {"a", "b", "c", "d"} and "completed" not in before.values(), before
    await browser.eval("() => { window.jetdagMarker = 'same page'; }")

    assert (await http.post(f"{stack.url}/queue/resume", json={})).status_code == 200
    await browser.wait(
        f"() => ({NODES})().every(([, state]) => state === 'completed')", timeout=60, message="every node completed"
    )
    assert await browser.eval("() => window.jetdagMarker") == "same page"
    assert await browser.eval("() => performance.getEntriesByType('navigation').length") == 1
    await browser.wait("() => document.querySelector('[data-badge=\"completed\"]')", message="execution completed")

    await browser.click('.graph [data-job-id="b"]')
    await browser.wait("() => document.querySelector('[data-details=\"b\"]')", message="details of b")
    details = await browser.eval("() => document.querySelector('[data-details=\"b\"]').textContent")
    assert "w1" in details or "w2" in details
    assert '"seconds": 0.3' in details, details  # its config
    await shoot(browser, "execution", tmp_path)
    # The keyboard reaches every node: focus, Enter.
    await browser.press('.graph [data-job-id="c"]', "Enter")
    await browser.wait("() => document.querySelector('[data-details=\"c\"]')", message="details of c by keyboard")
    await browser.click("#tab-timeline")
    await browser.wait("() => document.querySelectorAll('.tl-run').length === 4", message="four bars in the timeline")
    await shoot(browser, "timeline", tmp_path)


async def test_pause_resume_and_cancel_a_running_execution_from_its_page(
    stack: Stack, http: httpx.AsyncClient, browser: Browser
) -> None:
    await stack.up(workers=1)
    eid = await submit(http, stack.url, [job("long", "sleep", config={"seconds": 120}), job("after", "noop", ["long"])])
    await browser.goto(f"{base(stack)}/ui/executions/{eid}")
    await browser.wait(
        "() => document.querySelector('.graph [data-job-id=\"long\"]')?.dataset.state === 'running'",
        timeout=30,
        message="long running",
    )
    await browser.click('[data-action="pause-execution"]')
    await browser.wait("() => document.querySelector('[data-badge=\"paused\"]')", message="the paused badge")
    await browser.wait("() => document.querySelector('[data-action=\"resume-execution\"]')", message="a Resume button")
    held = (await http.get(f"{stack.url}/execute/{eid}")).json()["execution"]
    assert held["paused"] is True and held["status"] == "running"
    await browser.click('[data-action="resume-execution"]')
    await browser.wait("() => !document.querySelector('[data-badge=\"paused\"]')", message="the paused badge gone")
    assert (await http.get(f"{stack.url}/execute/{eid}")).json()["execution"]["paused"] is False
    await browser.click('[data-action="cancel-execution"]')
    await browser.click('dialog [data-action="confirm"]')
    await browser.wait(
        "() => document.querySelector('.graph [data-job-id=\"long\"]')?.dataset.state === 'cancelled'",
        timeout=30,
        message="long cancelled on the page",
    )
    await browser.wait("() => document.querySelector('[data-badge=\"cancelled\"]')", message="execution cancelled")
    body = (await http.get(f"{stack.url}/execute/{eid}")).json()
    assert body["execution"]["status"] == "cancelled"


async def test_executions_list_filters_and_retries(
    stack: Stack, http: httpx.AsyncClient, browser: Browser, tmp_path: Path
) -> None:
    await stack.up(workers=1)
    ok = await submit(http, stack.url, [job("a")])
    bad = await submit(http, stack.url, [job("x", "fail", config={"message": "boom", "times": 1})])
    await wait_for(lambda: _all_final(http, stack.url, [ok, bad]), timeout=30, message="both executions to end")
    await browser.goto(f"{base(stack)}/ui/executions")
    await browser.wait(
        "() => document.querySelectorAll('tr[data-execution-id]').length === 2", message="both executions listed"
    )
    await browser.wait(text_of('[data-count="failed"] strong') + " === '1'", message="one failed")
    await shoot(browser, "executions", tmp_path)
    await browser.click('[data-count="failed"]')
    await browser.wait(
        "(bad) => [...document.querySelectorAll('tr[data-execution-id]')].map(r => r.dataset.executionId).join() == bad",  # noqa: E501
        bad,
        message="only the failed execution",
    )
    await browser.click(f'tr[data-execution-id="{bad}"] [data-action="retry-execution"]')
    await browser.click('dialog [data-action="confirm"]')
    retried = await wait_for(lambda: _retried(http, stack.url, bad), timeout=30, message="the retried round to end")
    await browser.click('[data-count="failed"]')  # the filter off again: every execution
    await browser.wait(
        "([id, status]) => document.querySelector(`tr[data-execution-id='${id}']`)?.dataset.status === status",
        [bad, retried],
        message="the list follows the retried round live",
    )


async def _retried(http: httpx.AsyncClient, url: str, eid: str) -> str | None:
    execution = (await http.get(f"{url}/execute/{eid}")).json()["execution"]
    final = execution["status"] in FINAL
    return str(execution["status"]) if execution["round"] == 2 and final else None


async def _all_final(http: httpx.AsyncClient, url: str, ids: list[str]) -> bool:
    for eid in ids:
        if (await http.get(f"{url}/execute/{eid}")).json()["execution"]["status"] not in FINAL:
            return False
    return True


def layered_dag(layers: int, width: int) -> list[dict[str, object]]:
    """`layers` times `width` jobs; each depends on two jobs of the layer before."""
    jobs = []
    for layer in range(layers):
        for i in range(width):
            deps = [f"j{layer - 1}-{i}", f"j{layer - 1}-{(i + 1) % width}"] if layer else []
            jobs.append(job(f"j{layer}-{i}", "noop" if layer % 2 else "sleep", deps))
    return jobs


async def test_a_10k_job_dag_is_condensed_and_searchable(
    stack: Stack, http: httpx.AsyncClient, browser: Browser, tmp_path: Path
) -> None:
    # No workers: the DAG stays open, and the machine's cores go to the page, not to running 10,000 jobs.
    await stack.up(JETDAG_REQUEST_TIMEOUT_S="60")
    jobs = layered_dag(100, 100)
    r = await http.post(f"{stack.url}/execute", json={"workflowId": "big", "jobs": jobs}, timeout=120)
    assert r.status_code == 201, r.text
    eid = r.json()["executionId"]
    await browser.goto(f"{base(stack)}/ui/executions/{eid}")
    await browser.wait("() => window.jetdagGraphRenderedMs", timeout=60, message="the graph drawn")
    render_ms = await browser.eval("() => window.jetdagGraphRenderedMs")
    groups = await browser.eval("() => document.querySelectorAll('.graph [data-group]').length")
    drawn = await browser.eval("() => document.querySelectorAll('.graph [data-job-id]').length")
    print(f"10,000 jobs: first render {render_ms} ms after navigation start, {groups} groups")
    assert 0 < groups <= 100 and drawn == 0

    await browser.fill("#job-search", "j57-42")
    await browser.press("#job-search", "Enter")
    await browser.wait(
        "() => document.querySelector('.focus [data-job-id=\"j57-42\"]')?.dataset.state === 'pending'",
        message="the job found, drawn with its state",
    )
    neighbours = await browser.eval(
        "() => [...document.querySelectorAll('.focus [data-job-id]')].map(n => n.dataset.jobId)"
    )
    assert {"j56-42", "j56-43", "j58-42", "j58-41"} <= set(neighbours), neighbours
    await browser.wait("() => document.querySelector('[data-details=\"j57-42\"]')", message="details of j57-42")
    await shoot(browser, "execution-10k", tmp_path)
