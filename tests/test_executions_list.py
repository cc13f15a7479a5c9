"""GET /executions: filter by status and workflowId, newest first, paginated."""

from __future__ import annotations

import httpx

from tests.api import job, wait_final
from tests.conftest import Stack


async def test_list_filter_and_paginate(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    ids = []
    for i in range(5):
        wf = "nightly" if i % 2 == 0 else "hourly"
        jobs = [job("x", "fail")] if i == 4 else [job("x")]
        r = await http.post(f"{stack.url}/execute", json={"workflowId": wf, "jobs": jobs})
        ids.append(r.json()["executionId"])
    for eid in ids:
        await wait_final(http, stack.url, eid)
    body = (await http.get(f"{stack.url}/executions")).json()
    assert body["success"] and body["count"] == 5
    assert [e["executionId"] for e in body["executions"]] == list(reversed(ids))  # newest first
    nightly = (await http.get(f"{stack.url}/executions", params={"workflowId": "nightly"})).json()
    assert [e["executionId"] for e in nightly["executions"]] == [ids[4], ids[2], ids[0]]
    failed = (await http.get(f"{stack.url}/executions", params={"status": "failed"})).json()
    assert [e["executionId"] for e in failed["executions"]] == [ids[4]]
    page1 = (await http.get(f"{stack.url}/executions", params={"limit": 2})).json()
    assert [e["executionId"] for e in page1["executions"]] == [ids[4], ids[3]] and page1["nextCursor"] == ids[3]
    page2 = (await http.get(f"{stack.url}/executions", params={"limit": 2, "cursor": page1["nextCursor"]})).json()
    assert [e["executionId"] for e in page2["executions"]] == [ids[2], ids[1]]
    page3 = (await http.get(f"{stack.url}/executions", params={"limit": 2, "cursor": page2["nextCursor"]})).json()
    assert [e["executionId"] for e in page3["executions"]] == [ids[0]] and page3["nextCursor"] is None
