"""The request queue in front of the one engine, through the real app and the official `openai`
client: one request decodes, `queue_size` wait, one more is answered 503; a client that leaves (while
streaming or while queued) frees its slot and stops decoding. The model is `GatedModel` (conftest):
the queue is what is under test, and a gate makes "the engine is busy" deterministic."""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import openai
import pytest
from serve_helpers import TIMEOUT, GatedModel, health, serving, serving_with, wait_for

from anekit.errors import AnekitError
from anekit.serve import EngineQueue, create_app
from anekit.serve.queue import END


def client(base: str) -> openai.OpenAI:
    # max_retries=0: the client would otherwise retry a 503 by itself
    return openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=TIMEOUT)


def test_a_full_queue_answers_503_and_the_queued_requests_complete():
    model = GatedModel()
    with serving(create_app(model, queue_size=1)) as base, ThreadPoolExecutor(2) as pool:
        api = client(base)
        ask = lambda: api.completions.create(model="gated", prompt="a b c", max_tokens=3)  # noqa: E731
        first = pool.submit(ask)
        wait_for(lambda: health(base)["running"] == 1, "the first request to decode")
        second = pool.submit(ask)
        wait_for(lambda: health(base)["waiting"] == 1, "the second request to wait")

        with pytest.raises(openai.APIStatusError) as refused:
            ask()
        assert refused.value.status_code == 503
        error = refused.value.response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "queue_full" and "busy" in error["message"]
        assert refused.value.response.headers["retry-after"] == "1"

        model.gate.set()
        for done in (first.result(TIMEOUT), second.result(TIMEOUT)):
            assert done.choices[0].text == "t1 t2 t3 "
            assert done.choices[0].finish_reason == "length"
            assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (3, 3)
        # the slot is free before the answer arrives: the next request is admitted at once
        assert ask().choices[0].text == "t1 t2 t3 "
        state = health(base)
        assert (state["finished"], state["running"], state["waiting"]) == (3, 0, 0)


def test_queue_size_zero_admits_one_request():
    model = GatedModel()
    with serving(create_app(model, queue_size=0)) as base, ThreadPoolExecutor(1) as pool:
        api = client(base)
        first = pool.submit(
            lambda: api.chat.completions.create(
                model="gated", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=2
            )
        )
        wait_for(lambda: health(base)["running"] == 1, "the first request to decode")
        with pytest.raises(openai.APIStatusError) as refused:
            api.chat.completions.create(model="gated", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503
        model.gate.set()
        assert first.result(TIMEOUT).choices[0].message.content == "t1 t2 "


def test_a_client_that_drops_its_stream_frees_the_slot_and_stops_decoding():
    model = GatedModel(endless=True)
    model.gate.set()
    with serving(create_app(model, queue_size=0)) as base:
        api = client(base)
        stream = api.chat.completions.create(
            model="gated",
            messages=[{"role": "user", "content": "go"}],
            stream=True,
            max_completion_tokens=10**6,
        )
        seen = 0
        for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if seen == 3:
                break
        stream.close()  # drops the connection mid-stream

        wait_for(lambda: model.closed == 1, "decoding to stop (the model's stream closed)")
        produced = model.produced
        wait_for(lambda: health(base)["running"] == 0, "the slot to be freed")
        assert model.produced == produced  # nothing decoded after the close
        assert model.opened == 1
        # the engine takes the next request
        model.endless = False
        again = api.completions.create(model="gated", prompt="x", max_tokens=2)
        assert again.choices[0].text == "t1 t2 "


def raw_request(base: str, body: bytes) -> socket.socket:
    """A POST /v1/completions sent on a plain socket, so the test can hang up whenever it likes."""
    url = urlsplit(base)
    raw = socket.create_connection((url.hostname, url.port), timeout=TIMEOUT)
    raw.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    return raw


def test_a_client_that_leaves_a_plain_request_while_it_decodes_stops_decoding():
    model = GatedModel(endless=True)
    model.gate.set()
    with serving(create_app(model, queue_size=0)) as base:
        with raw_request(base, b'{"model": "gated", "prompt": "a", "max_tokens": 1000000}'):
            wait_for(lambda: model.produced > 0, "decoding to start")
        wait_for(lambda: model.closed == 1, "decoding to stop")
        wait_for(lambda: health(base)["running"] == 0, "the slot to be freed")
        model.endless = False
        assert (
            client(base).completions.create(model="gated", prompt="b", max_tokens=1).choices[0].text == "t1 "
        )


def test_a_client_that_leaves_while_queued_frees_its_slot_before_the_engine_reaches_it():
    model = GatedModel()
    with serving(create_app(model, queue_size=1)) as base, ThreadPoolExecutor(1) as pool:
        api = client(base)
        first = pool.submit(lambda: api.completions.create(model="gated", prompt="a", max_tokens=1))
        wait_for(lambda: health(base)["running"] == 1, "the first request to decode")

        # a raw HTTP request that waits in the queue, then its client hangs up
        with raw_request(base, b'{"model": "gated", "prompt": "b", "max_tokens": 1}'):
            wait_for(lambda: health(base)["waiting"] == 1, "the raw request to wait")
        wait_for(lambda: health(base)["waiting"] == 0, "the queued request's slot to be freed")
        state = health(base)
        assert state["dropped"] == 1 and state["running"] == 1

        model.gate.set()
        assert first.result(TIMEOUT).choices[0].text == "t1 "
        wait_for(lambda: health(base)["finished"] == 1, "the first request to finish")
        assert model.opened == 1  # the dropped request never reached the engine


def test_stopping_the_server_ends_an_open_stream_with_an_error_and_stops_decoding():
    model = GatedModel(endless=True)
    model.gate.set()
    with serving_with(create_app(model, queue_size=0)) as (base, server):
        api = client(base)
        stream = iter(api.completions.create(model="gated", prompt="x", max_tokens=10**6, stream=True))
        assert next(stream).choices[0].text == "t1 "
        server.should_exit = True  # what Ctrl-C does
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in stream:
                pass
        wait_for(lambda: model.closed == 1, "decoding to stop")
    assert model.opened == 1


def test_a_request_the_model_fails_is_500_and_the_engine_serves_the_next(caplog):
    model = GatedModel(fail_at=3)
    model.gate.set()
    with serving(create_app(model, queue_size=0)) as base:
        api = client(base)
        with pytest.raises(openai.InternalServerError) as failed:
            api.completions.create(model="gated", prompt="x", max_tokens=5)
        error = failed.value.response.json()["error"]
        assert error["type"] == "server_error" and "the model broke at token 3" in error["message"]
        stream = iter(api.completions.create(model="gated", prompt="x", max_tokens=5, stream=True))
        assert next(stream).choices[0].text == "t1 "
        with pytest.raises(openai.APIError, match="the model broke at token 3"):
            list(stream)
        model.fail_at = None
        assert api.completions.create(model="gated", prompt="x", max_tokens=2).choices[0].text == "t1 t2 "
        assert model.opened == model.closed == 3


def test_engine_queue_runs_jobs_one_at_a_time_in_order():
    order, overlap, running, gate = [], [], threading.Lock(), threading.Event()

    def work_for(name):
        def work(job):
            assert gate.wait(TIMEOUT)
            if not running.acquire(blocking=False):
                overlap.append(name)
                return
            try:
                order.append(name)
                job.emit(name)
            finally:
                running.release()

        return work

    async def main():
        queue = EngineQueue(queue_size=4)
        jobs = [queue.submit(work_for(i)) for i in range(5)]
        with pytest.raises(AnekitError, match="busy"):
            queue.submit(work_for(5))
        gate.set()
        results = []
        for job in jobs:
            results.append(await job.next())
            assert await job.next() is END
        queue.close(wait=TIMEOUT)
        return results

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert order == [0, 1, 2, 3, 4] and overlap == []


def test_engine_queue_hands_the_work_error_to_its_request_and_refuses_a_bad_size():
    def work(job):
        raise ValueError("boom")

    async def main():
        queue = EngineQueue(0)
        job = queue.submit(work)
        with pytest.raises(ValueError, match="boom"):
            await job.next()
        queue.close(wait=TIMEOUT)

    asyncio.run(main())
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(AnekitError, match="queue_size"):
            EngineQueue(bad)
