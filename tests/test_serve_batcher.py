"""The dynamic batcher on its own (no model): gathering, order, limits, failures, withdrawal."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from texocr.serve.batcher import Batcher, QueueFull


class _Model:
    """Doubles each input; records each call's batch; can be held at a gate or made to fail."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False

    def __call__(self, images: list[int]) -> list[int]:
        self.calls.append(list(images))
        assert self.gate.wait(10)
        time.sleep(self.delay_s)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        return [2 * x for x in images]


def test_concurrent_requests_share_model_calls_and_keep_order():
    model = _Model(delay_s=0.05)
    b = Batcher(model, max_batch=8, wait_ms=30, max_queue=64)

    async def go():
        return await asyncio.gather(*(b.submit([i, 100 + i]) for i in range(8)))

    out = asyncio.run(go())
    assert [[r.output for r in res] for res in out] == [[2 * i, 200 + 2 * i] for i in range(8)]
    assert sum(len(c) for c in model.calls) == 16 and max(len(c) for c in model.calls) == 8
    assert len(model.calls) <= 3  # 16 images in batches of up to 8, not 8 or 16 calls
    assert all(r.batch_size == len(model.calls[0]) for r in out[0])
    b.close()


def test_max_batch_one_is_no_batching():
    model = _Model()
    b = Batcher(model, max_batch=1, wait_ms=30, max_queue=64)

    async def go():
        return await asyncio.gather(*(b.submit([i]) for i in range(5)))

    out = asyncio.run(go())
    assert [res[0].output for res in out] == [0, 2, 4, 6, 8]
    assert [len(c) for c in model.calls] == [1] * 5
    b.close()


def test_full_queue_refuses_at_once_with_a_retry_hint():
    model = _Model()
    model.gate.clear()
    b = Batcher(model, max_batch=2, wait_ms=0, max_queue=3)

    async def go():
        first = asyncio.ensure_future(b.submit([1, 2, 3]))
        while b.pending < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as e:
            await b.submit([4])
        assert e.value.retry_after_s >= 1
        model.gate.set()
        return await first

    assert [r.output for r in asyncio.run(go())] == [2, 4, 6]
    b.close()


def test_a_failing_batch_fails_its_requests_only():
    model = _Model()
    b = Batcher(model, max_batch=4, wait_ms=0, max_queue=16)
    model.fail_next = True

    async def go():
        with pytest.raises(RuntimeError, match="exploded"):
            await b.submit([1])
        return await b.submit([5])

    assert asyncio.run(go())[0].output == 10
    b.close()


def test_timed_out_request_leaves_the_queue():
    model = _Model()
    model.gate.clear()
    b = Batcher(model, max_batch=1, wait_ms=0, max_queue=16)

    async def go():
        running = asyncio.ensure_future(b.submit([1]))
        while not model.calls:
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await b.submit([7, 8], timeout_s=0.1)
        assert b.pending == 1  # only the running one
        model.gate.set()
        return await running

    assert asyncio.run(go())[0].output == 2
    assert model.calls == [[1]]  # 7 and 8 never reached the model
    b.close()


def test_close_fails_what_is_queued():
    model = _Model()
    model.gate.clear()
    b = Batcher(model, max_batch=1, wait_ms=0, max_queue=16)

    async def go():
        running = asyncio.ensure_future(b.submit([1]))
        queued = asyncio.ensure_future(b.submit([2]))
        while not model.calls:
            await asyncio.sleep(0.01)
        threading.Timer(0.1, model.gate.set).start()
        await asyncio.get_running_loop().run_in_executor(None, b.close)
        with pytest.raises(QueueFull):
            await queued
        return await running

    assert asyncio.run(go())[0].output == 2
    with pytest.raises(ValueError):
        Batcher(model, max_batch=0)
