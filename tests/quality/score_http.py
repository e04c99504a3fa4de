"""Score a running caption server on the held-out drawn scenes, through its HTTP API.

Usage: python -m tests.quality.score_http --url http://127.0.0.1:8000 [--require]
       python -m tests.quality.score_http --bundle onnx_models/demo   (starts its own server)
       ... --results benchmarks/results/quality.json   (what make quality records; with --bundle, the
       bundle's own held-out figures and parity go in beside the scores; docs/demo-model.md shows them)

A scene is right when its caption names exactly its objects (size, colour and shape each);
a caption is degenerate when it says a word twice in a row or repeats four words. With
--require, exits 1 unless the demo's targets hold: OTHER_DRAWN_TARGET of the other-drawn
scenes right, PAINT_TARGET of the 18 paint drawings right, and no degenerate caption.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import requests

from bundle.specs import PARITY_ATOL
from training.evaluate import objects_in_caption

from .drawn_scenes import DrawnScene, other_drawn, paint_drawings

OTHER_DRAWN_TARGET = 0.90
PAINT_TARGET = 18
HELD_OUT_TARGET = 0.90
ENCODER_FLOPS_MARGIN = 0.05  # the demo's encoder against InceptionV3's


def degenerate(words: list[str]) -> bool:
    """A word said twice in a row, or four words said twice (no right caption of the demo's grammar does either)."""
    if any(a == b for a, b in zip(words, words[1:])):
        return True
    fours = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    return len(fours) != len(set(fours))


def caption_of(url: str, scene: DrawnScene, timeout: float = 60) -> str:
    """The server's caption of one scene; an HTTP error status raises."""
    response = requests.post(url.rstrip("/") + "/api/v1/captions", timeout=timeout,
                             files={"image": (scene.name + ".png", scene.png, "image/png")})
    response.raise_for_status()
    return response.json()["captions"][0]["caption"]


def score(url: str, scenes: list[DrawnScene]) -> dict:
    """Right and degenerate counts over `scenes`, with every caption by scene name."""
    captions = {scene.name: caption_of(url, scene) for scene in scenes}
    right = [s.name for s in scenes
             if Counter(objects_in_caption(captions[s.name].split())) == Counter(s.objects)]
    bad = [name for name, caption in captions.items() if degenerate(caption.split())]
    return {"scenes": len(scenes), "right": len(right), "degenerate": len(bad), "captions": captions,
            "wrong": [name for name in captions if name not in right], "degenerate_names": bad}


def recorded(results: dict, bundle: str | None) -> dict:
    """The figures worth keeping: each set's counts, and with a bundle its manifest's own held-out
    quality and parity."""
    out = {"sets": {name: {k: r[k] for k in ("scenes", "right", "degenerate")} for name, r in results.items()},
           "targets": {"other_drawn_right": OTHER_DRAWN_TARGET, "paint_right": PAINT_TARGET}}
    if bundle:
        manifest = json.loads((Path(bundle) / "bundle.json").read_text())
        metrics = manifest["provenance"].get("metrics", {})
        parity = manifest["provenance"].get("parity", {}).get("onnx", {})
        out["bundle"] = {"name": manifest["name"], "created": manifest["created"],
                         "held_out": {k: metrics[k] for k in ("test_images", "objects_right_all", "objects_right_1_objects",
                                                              "objects_right_2_objects", "bleu4") if k in metrics},
                         "greedy_captions_identical_to_keras": parity.get("greedy_captions_identical"),
                         "encoder_flops": encoder_flops(Path(bundle), manifest),
                         "max_abs_graph_diff": max(parity[role]["max_abs_diff_real"] for role in ("decoder_init", "decoder_step")),
                         # The encoder's tolerance is per unit of its largest feature (bundle.specs.GraphSpec).
                         "encoder_diff_per_unit": parity["encoder"]["max_abs_diff_real"] / parity["encoder"]["atol"]
                         * PARITY_ATOL}
    return out


def encoder_flops(bundle: Path, manifest: dict) -> dict:
    """The bundle's encoder FLOPs counted on its ONNX graph (2 per multiply-add of every Conv, MatMul
    and Gemm node: benchmarks.floor.count_flops), against InceptionV3's own convolutions (through
    mixed10, counted from the Keras layers' shapes at training), where the run recorded them."""
    from benchmarks.floor import count_flops

    counted = sum(count_flops(bundle / manifest["graphs"]["encoder"]["file"]).values())
    learned = manifest["provenance"].get("encoder", {}).get("learned_part")
    figures = {"onnx_graph": counted}
    if learned:
        figures.update(inception_v3=2 * learned["trunk_macs"], learned_part=2 * learned["macs"])
    return figures


def markdown(recorded: dict) -> str:
    """quality.md from quality.json: the demo's quality on every set, against its targets."""
    sets, bundle = recorded["sets"], recorded.get("bundle", {})
    other, paint = sets["other-drawn"], sets["paint"]
    lines = ["# The demo's quality", "",
             f"Bundle {bundle.get('name')} built {bundle.get('created')}. Written by `make quality` "
             "(`python -m tests.quality.score_http`): the two drawn sets through the HTTP API, the held-out "
             "figures from the bundle's manifest.", "",
             "| | measured | target |", "| --- | --- | --- |",
             f"| drawn by other code: {other['scenes']} scenes, every object right | **{other['right'] / other['scenes']:.1%}** "
             f"({other['right']}), {other['degenerate']} degenerate | ≥ {recorded['targets']['other_drawn_right']:.0%}, "
             "none degenerate |",
             f"| paint-program drawings, every object right | **{paint['right']} / {paint['scenes']}**, "
             f"{paint['degenerate']} degenerate | ≥ {recorded['targets']['paint_right']}, none degenerate |"]
    held = bundle.get("held_out", {})
    if held:
        lines += [f"| own held-out scenes ({held['test_images']}), every object right | {held['objects_right_all']:.1%} "
                  f"| ≥ {HELD_OUT_TARGET:.0%} |",
                  f"| ... one-object / two-object scenes | {held['objects_right_1_objects']:.1%} / "
                  f"{held['objects_right_2_objects']:.1%} | |",
                  f"| corpus BLEU-4 (5 references), own held-out scenes | {held['bleu4']:.3f} | ≥ 0.8 |",
                  "| ONNX vs Keras: greedy captions identical; max \\|diff\\| of the decoder's graphs, and of the "
                  "encoder's per unit of its largest feature | "
                  f"{bundle['greedy_captions_identical_to_keras']}; {bundle['max_abs_graph_diff']:.1e}; "
                  f"{bundle['encoder_diff_per_unit']:.1e} | all; ≤ 1e-4 |"]
    flops = bundle.get("encoder_flops", {})
    if "inception_v3" in flops:
        lines += [f"| encoder FLOPs, counted on its ONNX graph | {flops['onnx_graph'] / 1e9:.2f} G: "
                  f"{flops['onnx_graph'] / flops['inception_v3'] - 1:+.1%} against InceptionV3's "
                  f"{flops['inception_v3'] / 1e9:.2f} G (the learned part {flops['learned_part'] / 1e9:.2f} G) | "
                  f"within {ENCODER_FLOPS_MARGIN:.0%} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the server's base URL")
    where.add_argument("--bundle", help="serve this bundle (gunicorn, one worker) and score it")
    parser.add_argument("--require", action="store_true", help="exit 1 unless the demo's quality targets hold")
    parser.add_argument("--show", action="store_true", help="print every wrong or degenerate caption")
    parser.add_argument("--results", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    server = None
    try:
        if args.bundle:
            from harness.server_process import GunicornServer

            server = GunicornServer({"CAPTION_BUNDLE": args.bundle, "WEB_CONCURRENCY": "1"})
            server.wait_ready(120)
        url = server.url if server else args.url
        results = {"other-drawn": score(url, other_drawn()), "paint": score(url, paint_drawings())}
    except (requests.RequestException, RuntimeError) as exc:
        reason = (server.startup_error() if server else None) or str(exc).splitlines()[0]
        print(f"error: {reason.removeprefix('error: ')}", file=sys.stderr)
        return 2
    finally:
        if server:
            server.stop()
    for name, result in results.items():
        print(f"{name}: {result['right']}/{result['scenes']} right ({result['right'] / result['scenes']:.1%}), "
              f"{result['degenerate']} degenerate")
        if args.show:
            for scene in sorted(set(result["wrong"]) | set(result["degenerate_names"])):
                print(f"  {scene}: {result['captions'][scene]}")
    if args.results:
        args.results.write_text(json.dumps(recorded(results, args.bundle), indent=2) + "\n")
    other, paint = results["other-drawn"], results["paint"]
    met = (other["right"] >= OTHER_DRAWN_TARGET * other["scenes"] and paint["right"] >= PAINT_TARGET
           and other["degenerate"] == 0 and paint["degenerate"] == 0)
    if args.require and not met:
        print(f"error: below the demo's targets ({OTHER_DRAWN_TARGET:.0%} other-drawn, {PAINT_TARGET}/18 paint, "
              "none degenerate)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
