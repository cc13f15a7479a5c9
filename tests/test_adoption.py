"""An adoption whose carrying on fails (the end's writes refused while a node is down) lets the execution go
again, so that the retry adopts it afresh; before, the retry found it "owned" and stopped, and the execution
stayed half ended with every read of it waiting for an end nobody wrote."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.scheduler import shards
from services.scheduler.shards import ShardManager


class _Adopted:
    def __init__(self, manager: ShardManager) -> None:
        self.manager = manager
        self.state = SimpleNamespace(status="completed", shard=0)
        self.given_up: list[str] = []

    async def finish_again(self) -> None:
        raise RuntimeError("no stream answers (a node is down)")

    async def give_up(self, why: str) -> None:
        self.given_up.append(why)
        self.manager.owned.pop("exec-1", None)  # what Owned does through on_gone


async def test_a_failed_carry_on_after_adoption_lets_the_execution_go(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = ShardManager.__new__(ShardManager)
    manager.owned = {}
    manager.context = SimpleNamespace()
    adopted: list[_Adopted] = []

    async def adopt(*_: Any) -> _Adopted:
        adopted.append(_Adopted(manager))
        return adopted[-1]

    monkeypatch.setattr(shards, "adopt", adopt)
    shard = SimpleNamespace(n=0, revision=7)
    for attempt in (1, 2):
        with pytest.raises(RuntimeError):
            await manager._adopt_one("exec-1", shard)  # type: ignore[arg-type]
        assert "exec-1" not in manager.owned
        assert len(adopted) == attempt and adopted[-1].given_up == ["adopted, but carrying it on failed"]
