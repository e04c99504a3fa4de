"""Dev learning curves of training runs, side by side: quality after every epoch, against the
epoch and against the seconds spent training.

Usage: python -m training.curves runs/demo runs/pooled --labels attention pooled --out curves.png
       ... --results benchmarks/results/learning_curves.json   (the curves as figures, for the docs' table)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_curve(run: Path) -> tuple[str, list[dict]]:
    """(metric name, [{"epoch", "seconds", metric, ...}]) from a run's metrics.json."""
    curve = json.loads((run / "metrics.json").read_text()).get("learning_curve") or []
    if not curve:
        raise ValueError(f"{run}/metrics.json has no learning curve (a run of an earlier version)")
    metric = next(k for k in curve[0] if k not in ("epoch", "seconds", "val_loss"))
    return metric, curve


def plot(curves: dict[str, tuple[str, list[dict]]], out: Path, by_time: bool = True) -> None:
    """Quality against the epoch and (`by_time`: when the runs shared one machine's conditions) the seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2 if by_time else 1, figsize=(10 if by_time else 5.5, 3.8), sharey=True,
                                squeeze=False)
    by_epoch = axes[0][0]
    for label, (metric, curve) in curves.items():
        values = [point[metric] for point in curve]
        by_epoch.plot([point["epoch"] for point in curve], values, marker="o", label=label)
        if by_time:
            axes[0][1].plot([point["seconds"] for point in curve], values, marker="o", label=label)
    metric = next(iter(curves.values()))[0]
    by_epoch.set(xlabel="epoch", ylabel=f"dev {metric}")
    if by_time:
        axes[0][1].set(xlabel="seconds of training (this machine)")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    by_epoch.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)


def markdown(results: dict) -> str:
    """learning_curves.md from learning_curves.json: each run's dev score after every epoch."""
    curves = results["curves"]
    metric = results["metric"]
    epochs = max(len(points) for points in curves.values())
    header = "| epoch | " + " | ".join(curves) + " |"
    rows = [f"| {e + 1} | " + " | ".join(f"{points[e][metric]:.3f}" if e < len(points) else "" for points in curves.values())
            + " |" for e in range(epochs)]
    return (f"# Learning curves\n\nDev `{metric}` after every epoch, written by `python -m training.curves`"
            f" ({results['note']}).\n\n" + "\n".join([header, "| --- |" + " --- |" * len(curves), *rows]) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="training run folders")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the folder names)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--results", type=Path, help="also write the curves to this JSON file (and its .md)")
    parser.add_argument("--note", default="", help="what the runs were, for the results page")
    parser.add_argument("--no-seconds", dest="by_time", action="store_false",
                        help="leave out the panel by seconds (runs timed under different conditions)")
    args = parser.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        print("error: give one label per run", file=sys.stderr)
        return 2
    try:
        curves = {label: read_curve(run) for label, run in zip(labels, args.runs)}
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len({metric for metric, _ in curves.values()}) > 1:
        print("error: the runs measure different things (synthetic and real data)", file=sys.stderr)
        return 2
    plot(curves, args.out, args.by_time)
    if args.results:
        results = {"metric": next(iter(curves.values()))[0], "note": args.note,
                   "curves": {label: curve for label, (_, curve) in curves.items()}}
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        args.results.with_suffix(".md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
