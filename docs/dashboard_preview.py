"""docs/dashboard.png: the Grafana dashboard's queries (deploy/grafana/caption-server.json), drawn from
a real Prometheus scraping the demo server under a minute of mixed load (harness/dashboard.py).
Grafana itself is not packaged where this project builds, so this draws each panel's series
with matplotlib, in the dashboard's order and titles.

Usage: python -m docs.dashboard_preview [--bundle onnx_models/demo] [--seconds 60]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bundle.format import load_bundle  # noqa: E402
from harness.dashboard import Prometheus, expression, mixed_load, panels  # noqa: E402
from harness.server_process import GunicornServer  # noqa: E402

OUT = Path(__file__).parent / "dashboard.png"


def legend(template: str, labels: dict) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args(argv)
    from benchmarks.peers import scene_photos

    server = GunicornServer({"CAPTION_BUNDLE": str(args.bundle)})
    prometheus = None
    try:
        server.wait_ready(120)
        prometheus = Prometheus([server.url.removeprefix("http://")])
        prometheus.wait_scraping()
        started = time.time()
        mixed_load(server, scene_photos(1)[0], load_bundle(args.bundle).name, args.seconds)
        time.sleep(3)
        ended = time.time()
        shown = panels()
        figure, axes = plt.subplots(3, 3, figsize=(15, 10), constrained_layout=True)
        for axis, panel in zip(axes.flat, shown):
            for target in panel["targets"]:
                for series in prometheus.query_range(expression(target), started, ended):
                    times = [float(t) - started for t, _ in series["values"]]
                    values = [float(v) for _, v in series["values"]]
                    axis.plot(times, values, label=legend(target.get("legendFormat", ""), series["metric"])[:48])
            axis.set_title(panel["title"], fontsize=10)
            axis.set_xlabel("s", fontsize=8)
            axis.tick_params(labelsize=7)
            axis.legend(fontsize=6, loc="upper right")
        figure.suptitle(f"The dashboard's queries over {args.seconds:g} s of mixed load on {args.bundle.name} "
                        "(Prometheus, 1 s scrapes)", fontsize=11)
        figure.savefig(OUT, dpi=80)
    finally:
        if prometheus:
            prometheus.stop()
        server.stop()
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
