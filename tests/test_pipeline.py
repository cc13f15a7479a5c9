"""shared.pipeline against a real nats-server, and the nats-py bug it works around."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from shared.pipeline import JetStreamError, Pipeline


async def test_compare_and_set_conflict_is_an_error_with_its_code(nc: Client, namespace: str) -> None:
    js = nc.jetstream()
    bucket = f"{namespace}_kv"
    await js.create_key_value(bucket=bucket, direct=True)
    pipeline = Pipeline(nc, timeout=5)
    revision = await pipeline.kv_write(bucket, "k", b"1", last=0)
    assert await pipeline.kv_get(bucket, "k") == (b"1", revision)
    with pytest.raises(JetStreamError) as conflict:
        await pipeline.kv_write(bucket, "k", b"2", last=revision + 100)
    assert conflict.value.wrong_last_sequence
    second = await pipeline.kv_write(bucket, "k", b"2", last=revision)
    assert second > revision
    assert await pipeline.kv_get(bucket, "missing") is None


async def test_pipelined_publishes_keep_their_order_and_dedupe(nc: Client, namespace: str) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=f"{namespace}_S", subjects=[f"{namespace}.s.>"]))
    pipeline = Pipeline(nc, timeout=5)
    messages = [(f"{namespace}.s.{i}", str(i).encode(), f"id-{i}") for i in range(200)]
    await pipeline.publish_all(messages)
    await pipeline.publish_all(messages[:10])  # same message ids: dropped by the duplicate window
    info = await js.stream_info(f"{namespace}_S")
    assert info.state.messages == 200
    first, last = await js.get_msg(f"{namespace}_S", seq=1), await js.get_msg(f"{namespace}_S", seq=200)
    assert (first.data, last.data) == (b"0", b"199")


async def test_nats_py_publish_async_never_resolves_a_rejected_publish(nc: Client, namespace: str) -> None:
    """Why shared.pipeline exists (nats-py 2.16): a rejected publish_async future hangs. If this
    starts failing, nats-py fixed it and the pipeline could go back to publish_async."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=f"{namespace}_R", subjects=[f"{namespace}.r"]))
    future = await js.publish_async(f"{namespace}.r", b"x", headers={"Nats-Expected-Last-Subject-Sequence": "99"})
    done, _ = await asyncio.wait({future}, timeout=1.0)
    assert not done, "publish_async now resolves rejections: nats-py fixed the bug"
    future.cancel()
