"""The peer benchmark's own code: alternating rounds, ratios, the Open Inference Protocol request it
sends Triton, and a short run against this server and LitServe on the test bundle."""
import json
import struct

import pytest

from benchmarks.peers import (check_same_captions, headline, infer_request, markdown, pairs, plot, ratios,
                              round_order, run, scene_photos)


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


def test_pairs_compare_this_server_with_each_peer():
    assert pairs(["this", "triton", "litserve", "triton-defaults"]) == [
        ("this", "triton"), ("this", "litserve"), ("this", "triton-defaults")]


def test_servers_on_one_engine_that_caption_differently_are_not_compared():
    check_same_captions({"this": ["a red circle"], "litserve": ["a red circle"]})
    with pytest.raises(RuntimeError, match="litserve captions differently"):
        check_same_captions({"this": ["a red circle"], "litserve": ["a blue circle"]})
    # The peers at their defaults run fp32: checked among themselves, not against a faster path's captions.
    check_same_captions({"this": ["a red circle"], "triton-defaults": ["a blue circle"],
                         "litserve-defaults": ["a blue circle"]})
    with pytest.raises(RuntimeError, match="litserve-defaults captions differently from triton-defaults"):
        check_same_captions({"triton-defaults": ["a blue circle"], "litserve-defaults": ["a red circle"]})


def test_the_headline_gives_each_peer_at_its_defaults_with_its_engine_twin_beside_it():
    table = {"median": 0.5, "corrected_median": 0.6}
    results = {"servers": ["this", "triton", "triton-defaults", "litserve"], "concurrency": [1, 8],
               "rounds": [{}, {}], "machine": "AMD EPYC, Python 3.11", "default_path": "openvino int8",
               "ratios": {f"this/{o}": {"p50": table, "throughput_c8": table}
                          for o in ("triton", "triton-defaults", "litserve")}}
    assert headline(results).splitlines()[2:] == [
        "- against triton at its defaults: single-image p50 0.50x (0.60x) its p50; throughput 0.50x (0.60x) at 8 "
        "clients; on this server's engine settings: single-image p50 0.50x (0.60x) its p50; throughput 0.50x "
        "(0.60x) at 8 clients",
        "- against litserve on this server's engine settings: single-image p50 0.50x (0.60x) its p50; throughput "
        "0.50x (0.60x) at 8 clients"]
    assert "(on openvino int8, the path it chose)" in headline(results)


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


def test_a_short_run_against_litserve_on_this_engine_and_at_its_defaults(bundle_dir, tmp_path):
    photos = scene_photos(2)
    names = ["this", "litserve", "litserve-defaults"]
    results = {"machine": "test", **run(bundle_dir, names, rounds=2, seconds=1.0, concurrency=(1, 2), photos=photos)}
    assert results["captions"]["this"] == results["captions"]["litserve"] and len(results["captions"]["this"]) == 2
    assert len(results["captions"]["litserve-defaults"]) == 2 and results["default_path"]
    assert [list(r) for r in results["rounds"]] == [names, names[::-1]]
    for figures_of_round in results["rounds"]:
        for server in figures_of_round.values():
            assert server["memory_mb"] > 50
            assert server["probe_ms"] > 0
            for clients in ("1", "2"):
                assert server[clients]["requests"] > 0 and server[clients]["errors"] == 0
    assert len(results["ratios"]["this/litserve"]["throughput_c2"]["rounds"]) == 2
    table = markdown(results)
    assert "| this/litserve |" in table and "| this/litserve-defaults |" in table and table.count("\n| this") == 3
    plot(results, tmp_path / "peers.png")
    assert (tmp_path / "peers.png").stat().st_size > 10_000
