"""Score a running caption server on the held-out drawn scenes, through its HTTP API.

Usage: python -m tests.quality.score_http --url http://127.0.0.1:8000 [--require]
       python -m tests.quality.score_http --bundle onnx_models/demo   (starts its own server)

A scene is right when its caption names exactly its objects (size, colour and shape each);
a caption is degenerate when it says a word twice in a row or repeats four words. With
--require, exits 1 unless the demo's targets hold: OTHER_DRAWN_TARGET of the other-drawn
scenes right, PAINT_TARGET of the 18 paint drawings right, and no degenerate caption.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

import requests

from training.evaluate import objects_in_caption

from .drawn_scenes import DrawnScene, other_drawn, paint_drawings

OTHER_DRAWN_TARGET = 0.85
PAINT_TARGET = 16


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the server's base URL")
    where.add_argument("--bundle", help="serve this bundle (gunicorn, one worker) and score it")
    parser.add_argument("--require", action="store_true", help="exit 1 unless the demo's quality targets hold")
    parser.add_argument("--show", action="store_true", help="print every wrong or degenerate caption")
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
