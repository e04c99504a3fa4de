"""The queue in front of the model: concurrent requests are captioned together, oldest first,
each gets its own captions back, a lone request is captioned at once; the queue is bounded,
requests past their deadline or whose client left are dropped before the model."""
import threading
import time

import numpy as np
import pytest

from prometheus_client import REGISTRY

from bundle.decoding import Hypothesis
from bundle.format import load_bundle
from server.batching import BatchLimits, MicroBatcher
from server.config import Config
from server.engine import CaptionEngine, CaptionResult
from server.errors import RequestError


class SlowEngine:
    """Captions image i as [i] after `delay` seconds, and records every batch it ran."""

    def __init__(self, delay=0.3, fail_on=None):
        self.delay, self.fail_on, self.batches = delay, fail_on, []

    def caption(self, images, beam_size=1, max_length=None, length_penalty=0.0, attention=False):
        ids = [int(image[0, 0, 0]) for image in images]
        self.batches.append((ids, beam_size))
        time.sleep(self.delay)
        if self.fail_on in ids:
            raise RuntimeError(f"engine failed on {self.fail_on}")
        return CaptionResult([[Hypothesis([i], 0.0, 0.0)] for i in ids], {"encode": 1.0, "decode": 2.0})


def images(*ids):
    return np.stack([np.full((2, 2, 3), i, np.float32) for i in ids])


def submit_while_busy(batcher, requests, **kwargs):
    """Start the first request, then the rest while it runs; returns {index: result or error}."""
    out = {}

    def call(i, ids, beam):
        try:
            out[i] = batcher.caption(images(*ids), beam_size=beam, **kwargs)
        except Exception as exc:  # collected for the assertions
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i, *r)) for i, r in enumerate(requests)]
    threads[0].start()
    wait_for(lambda: batcher.engine.batches)  # the first is now running alone
    for queued, t in enumerate(threads[1:], 1):
        t.start()
        wait_for(lambda: len(batcher.pending) == queued or queued in out)  # a definite arrival order (or refused)
    for t in threads:
        t.join()
    return out


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_lone_request_runs_at_once():
    engine = SlowEngine(delay=0)
    result = MicroBatcher(engine, BatchLimits(max_batch_size=16), run=lambda fn: fn()).caption(images(7, 8))
    assert [h[0].tokens for h in result.hypotheses] == [[7], [8]]
    assert engine.batches == [([7, 8], 1)] and result.timings_ms["queue"] < 5


def test_requests_queued_meanwhile_share_a_batch_in_arrival_order():
    engine = SlowEngine()
    out = submit_while_busy(MicroBatcher(engine, BatchLimits(max_batch_size=16), run=lambda fn: fn()),
                            [([1], 1), ([2, 3], 1), ([4], 3), ([5], 1)])
    assert engine.batches == [([1], 1), ([2, 3, 5], 1), ([4], 3)]  # beam 3 cannot join a greedy batch
    for i, want in enumerate([[1], [2, 3], [4], [5]]):
        assert [h[0].tokens[0] for h in out[i].hypotheses] == want
    assert out[3].timings_ms["queue"] > 200  # it waited for the first batch (300 ms)


def test_a_batch_never_exceeds_max_images():
    engine = SlowEngine()
    submit_while_busy(MicroBatcher(engine, BatchLimits(max_batch_size=3), run=lambda fn: fn()), [([1], 1), ([2, 3], 1), ([4, 5], 1), ([6], 1)])
    assert [ids for ids, _ in engine.batches] == [[1], [2, 3, 6], [4, 5]]


def test_an_engine_error_reaches_every_request_of_its_batch_and_the_next_batch_runs():
    engine = SlowEngine(fail_on=3)
    out = submit_while_busy(MicroBatcher(engine, BatchLimits(max_batch_size=2), run=lambda fn: fn()), [([1], 1), ([2], 1), ([3], 1), ([4], 1)])
    assert [h[0].tokens[0] for h in out[0].hypotheses] == [1]
    assert isinstance(out[1], RuntimeError) and isinstance(out[2], RuntimeError)  # batch [2, 3]
    assert [h[0].tokens[0] for h in out[3].hypotheses] == [4]


def test_real_engine_batched_captions_equal_single_ones(bundle_dir, shapes_dataset):
    from bundle.preprocess import load_image

    engine = CaptionEngine(load_bundle(bundle_dir))
    paths = sorted((shapes_dataset / "Images").glob("*.jpg"))[:6]
    batch = np.stack([load_image(p, engine.preprocessing) for p in paths])
    want = [h[0].tokens for h in engine.caption(batch).hypotheses]
    batcher, got = MicroBatcher(engine), {}

    def call(i):
        got[i] = batcher.caption(batch[i:i + 1]).hypotheses[0][0].tokens

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(paths))] == want


def test_a_full_queue_refuses_at_once_with_retry_after():
    engine = SlowEngine()
    batcher = MicroBatcher(engine, BatchLimits(max_queue_images=3), run=lambda fn: fn())
    started = time.perf_counter()
    out = submit_while_busy(batcher, [([1], 1), ([2, 3], 1), ([4], 1), ([5], 1)])
    refused = out[3]
    assert isinstance(refused, RequestError) and refused.status == 503 and refused.code == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert [ids for ids, _ in engine.batches] == [[1], [2, 3, 4]]  # the refused request never ran
    assert time.perf_counter() - started < 5


def test_a_lone_request_is_taken_even_if_it_is_larger_than_the_bound():
    engine = SlowEngine(delay=0)
    result = MicroBatcher(engine, BatchLimits(max_queue_images=1), run=lambda fn: fn()).caption(images(1, 2, 3))
    assert [h[0].tokens[0] for h in result.hypotheses] == [1, 2, 3]


def test_work_past_its_deadline_is_dropped_before_the_model():
    engine = SlowEngine(delay=0.5)
    batcher = MicroBatcher(engine, run=lambda fn: fn())
    deadline = time.perf_counter() + 0.2  # the first batch takes 0.5 s
    out = submit_while_busy(batcher, [([1], 1), ([2], 1), ([3], 1)], deadline=deadline)
    assert [h[0].tokens[0] for h in out[0].hypotheses] == [1]
    for late in (out[1], out[2]):
        assert isinstance(late, RequestError) and (late.status, late.code) == (503, "deadline_exceeded")
        assert "Retry-After" in late.headers
    assert engine.batches == [([1], 1)]
    assert not batcher.pending and batcher.queued_images == 0 and not batcher.busy


def test_a_request_whose_client_left_is_not_computed():
    engine = SlowEngine(delay=0.2)
    batcher = MicroBatcher(engine, run=lambda fn: fn())
    gone = {2}
    out = {}

    def call(i):
        try:
            out[i] = batcher.caption(images(i), connected=lambda: i not in gone)
        except RequestError as exc:
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3)]
    threads[0].start()
    wait_for(lambda: engine.batches)
    for queued, t in enumerate(threads[1:], 1):
        t.start()
        wait_for(lambda: len(batcher.pending) == queued)
    for t in threads:
        t.join()
    assert [ids for ids, _ in engine.batches] == [[1], [3]]
    assert out[2].status == 499 and out[2].code == "client_closed_request"


def test_without_micro_batching_each_request_runs_alone():
    engine = SlowEngine(delay=0.1)
    submit_while_busy(MicroBatcher(engine, BatchLimits(combine=False), run=lambda fn: fn()),
                      [([1], 1), ([2], 1), ([3], 1)])
    assert [ids for ids, _ in engine.batches] == [[1], [2], [3]]


def test_a_queue_delay_lets_a_batch_wait_for_company():
    engine = SlowEngine(delay=0)
    batcher = MicroBatcher(engine, BatchLimits(max_queue_delay_s=0.5), run=lambda fn: fn())
    out = {}
    first = threading.Thread(target=lambda: out.update(a=batcher.caption(images(1))))
    first.start()
    wait_for(lambda: batcher.busy)
    out["b"] = batcher.caption(images(2))
    first.join()
    assert [ids for ids, _ in engine.batches] == [[1, 2]]


def test_each_request_is_charged_its_share_of_the_batch_time():
    def encode_seconds():
        return REGISTRY.get_sample_value("caption_stage_seconds_sum", {"stage": "encode"}) or 0.0

    engine = SlowEngine()  # reports 1 ms of encoding per batch
    before = encode_seconds()
    submit_while_busy(MicroBatcher(engine, run=lambda fn: fn()), [([1], 1), ([2, 3], 1), ([4], 1)])
    assert [ids for ids, _ in engine.batches] == [[1], [2, 3, 4]]
    assert encode_seconds() - before == pytest.approx(2 * 1e-3)  # two batches, not three requests' worth


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False)])
def test_micro_batching_is_a_setting(value, expected):
    assert Config.from_env({"CAPTION_MICRO_BATCHING": value}).micro_batching is expected
