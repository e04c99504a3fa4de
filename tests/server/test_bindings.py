"""The encoder and the decoder over fixed buffers (IO binding, what CUDA graphs replay) give
exactly what plain `run` gives.

On this CPU-only machine the buffers live on "cpu": the same bindings, buffer reuse and
ping-pong as on CUDA, without the graph capture itself, which needs a GPU (benchmarks/gpu.py
measured it there). tests/server/test_providers.py covers provider choice.
"""
import threading

import numpy as np
import pytest

from bundle.format import load_bundle
from bundle.preprocess import load_image
from bundle.sessions import SessionDecoder
from server.bound_decoder import BoundDecoder
from server.bound_encoder import BoundEncoder
from server.engine import CaptionEngine, EngineOptions


@pytest.fixture(scope="module")
def engines(bundle_dir):
    bundle = load_bundle(bundle_dir)
    return {mode: CaptionEngine(bundle, EngineOptions(io_binding=mode)) for mode in ("off", "on")}


@pytest.fixture(scope="module")
def images(engines, shapes_dataset):
    paths = sorted((shapes_dataset / "Images").glob("*.jpg"))[:5]
    preprocessing = engines["off"].preprocessing
    return np.stack([load_image(p, preprocessing) for p in paths])


def tokens(hypotheses):
    return [[h.tokens for h in image] for image in hypotheses]


def test_auto_keeps_the_state_in_numpy_on_cpu(bundle_dir):
    engine = CaptionEngine(load_bundle(bundle_dir))
    assert isinstance(engine.decoder, SessionDecoder)


def test_on_binds_cpu_buffers_without_cuda_graphs(engines):
    for part, kind in ((engines["on"].encoder, BoundEncoder), (engines["on"].decoder, BoundDecoder)):
        assert isinstance(part, kind)
        assert (part.device, part.cuda_graphs) == ("cpu", False)


def test_bound_encoder_gives_the_plain_features(engines, images):
    encoder = engines["on"].encoder
    for n in (1, 3, 3):
        assert (encoder(images[:n]) == engines["off"].encode(images[:n])).all()
    assert set(encoder.buffers) == {1, 3}  # one set per batch size, reused


def test_batches_beyond_the_graph_limit_run_plainly(engines, images):
    encoder = engines["on"].encoder
    big = np.concatenate([images] * 2)
    assert len(big) > encoder.max_batch
    assert (encoder(big) == engines["off"].encode(big)).all()
    assert len(big) not in encoder.buffers


@pytest.mark.parametrize("beam_size", [1, 3])
def test_bound_state_decodes_like_numpy(engines, images, beam_size):
    plain = engines["off"].caption(images, beam_size=beam_size).hypotheses
    bound = engines["on"].caption(images, beam_size=beam_size).hypotheses
    assert tokens(bound) == tokens(plain)
    for bound_image, plain_image in zip(bound, plain):
        for b, p in zip(bound_image, plain_image):
            assert b.score == pytest.approx(p.score, abs=1e-5)
    assert any(len(image[0].tokens) > 2 for image in plain)  # real captions, not empty ones


def test_buffers_are_reused_per_batch_size(engines, images):
    engine = engines["on"]
    first = engine.caption(images[:2]).hypotheses
    buffers = engine.decoder.buffers[2]
    again = engine.caption(images[:2]).hypotheses
    assert engine.decoder.buffers[2] is buffers  # same buffers: fixed addresses, as CUDA graphs need
    assert tokens(again) == tokens(first)
    engine.caption(images[:3], beam_size=2)
    assert {2, 3, 6} <= set(engine.decoder.buffers)  # 3 images x 2 beams share one set of 6


def test_select_reorders_rows(engines, images):
    decoder = engines["on"].decoder
    with decoder.lock:
        n, read = decoder.initial_state(engines["on"].encode(images[:3]))
        before = [decoder.buffers[n].current(key, read).numpy().copy() for key in ("h", "c", "context")]
        m, read = decoder.select((n, read), np.array([2, 0, 0, 1]))
        after = [decoder.buffers[m].current(key, read).numpy() for key in ("h", "c", "context")]
    assert m == 4
    for b, a in zip(before, after):
        assert (a == b[[2, 0, 0, 1]]).all()


def test_concurrent_captions_do_not_share_buffers_mid_caption(engines, images):
    """Buffers are per batch size, so two threads captioning at once must take turns (the lock)."""
    engine = engines["on"]
    want = [tokens(engines["off"].caption(images[i:i + 1]).hypotheses) for i in range(len(images))]
    got, errors = {i: [] for i in range(len(images))}, []

    def caption(i):
        try:
            for _ in range(10):
                got[i].append(tokens(engine.caption(images[i:i + 1]).hypotheses))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=caption, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [got[i] for i in range(len(images))] == [[w] * 10 for w in want]
