"""The peer benchmark's own code: alternating rounds, ratios, the Open Inference Protocol request it
sends Triton, and a short run against this server and LitServe on the test bundle."""
import json
import struct

import pytest

from benchmarks.peers import (check_same_captions, infer_request, markdown, pairs, plot, ratios, round_order, run,
                              scene_photos)


def test_rounds_alternate_the_order_of_the_servers():
    names = ["this", "triton", "litserve"]
    assert [round_order(names, i) for i in range(3)] == [names, names[::-1], names]


def figures(p50: float, p99: float, rps: dict, probe: float = 30.0) -> dict:
    return {"1": {"p50_ms": p50, "p99_ms": p99, "throughput_rps": rps[1]},
            "8": {"p50_ms": 0, "p99_ms": 0, "throughput_rps": rps[8]}, "probe_ms": probe}


def test_ratios_are_per_round_then_the_median():
    rounds = [{"this": figures(40, 50, {1: 25, 8: 30}), "peer": figures(50, 50, {1: 20, 8: 30})},
              {"this": figures(45, 60, {1: 22, 8: 33}), "peer": figures(45, 40, {1: 22, 8: 30})},
              {"this": figures(30, 40, {1: 30, 8: 36}), "peer": figures(60, 80, {1: 16, 8: 30})}]
    table = ratios(rounds, "this", "peer", (1, 8))
    assert (table["p50"]["rounds"], table["p50"]["median"]) == ([0.8, 1.0, 0.5], 0.8)
    assert (table["p99"]["rounds"], table["p99"]["median"]) == ([1.0, 1.5, 0.5], 1.0)
    assert table["throughput_c1"]["median"] == 1.25 and table["throughput_c8"]["rounds"] == [1.0, 1.1, 1.2]
    assert table["p50"]["corrected_rounds"] == table["p50"]["rounds"]  # the machine did not drift


def test_the_machine_s_drift_between_two_windows_cancels():
    # The peer's turn came while the machine was 25 % slower: its figures are 25 % worse for that alone.
    rounds = [{"this": figures(40, 40, {1: 25, 8: 30}, probe=30.0), "peer": figures(50, 50, {1: 20, 8: 24}, probe=37.5)}]
    table = ratios(rounds, "this", "peer", (1, 8))
    assert table["p50"]["median"] == 0.8 and table["p50"]["corrected_median"] == 1.0
    assert table["throughput_c8"]["median"] == 1.25 and table["throughput_c8"]["corrected_median"] == 1.0


def test_pairs_compare_each_of_this_servers_paths_with_each_peer():
    assert pairs(["this", "this-openvino", "triton", "litserve"]) == [
        ("this", "triton"), ("this", "litserve"), ("this-openvino", "triton"), ("this-openvino", "litserve")]


def test_servers_that_caption_differently_are_not_compared():
    check_same_captions({"this": ["a red circle"], "peer": ["a red circle"]})
    with pytest.raises(RuntimeError, match="peer captions differently"):
        check_same_captions({"this": ["a red circle"], "peer": ["a blue circle"]})


def test_the_triton_request_is_the_binary_data_extension_of_one_bytes_element():
    image = scene_photos(1)[0]
    body, headers = infer_request(image)
    header_length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:header_length])
    (element,) = header["inputs"]
    assert (element["name"], element["datatype"], element["shape"]) == ("image", "BYTES", [1, 1])
    payload = body[header_length:]
    assert element["parameters"]["binary_data_size"] == len(payload)
    assert struct.unpack("<I", payload[:4])[0] == len(image) and payload[4:] == image


def test_a_short_run_against_litserve(bundle_dir, tmp_path):
    photos = scene_photos(2)
    results = {"machine": "test", **run(bundle_dir, ["this", "litserve"], rounds=2, seconds=1.0,
                                        concurrency=(1, 2), photos=photos)}
    assert results["captions"]["this"] == results["captions"]["litserve"] and len(results["captions"]["this"]) == 2
    assert [list(r) for r in results["rounds"]] == [["this", "litserve"], ["litserve", "this"]]
    for figures_of_round in results["rounds"]:
        for server in figures_of_round.values():
            assert server["memory_mb"] > 50
            assert server["probe_ms"] > 0
            for clients in ("1", "2"):
                assert server[clients]["requests"] > 0 and server[clients]["errors"] == 0
    assert len(results["ratios"]["this/litserve"]["throughput_c2"]["rounds"]) == 2
    table = markdown(results)
    assert "| this/litserve |" in table and table.count("\n| this") == 2
    plot(results, tmp_path / "peers.png")
    assert (tmp_path / "peers.png").stat().st_size > 10_000
