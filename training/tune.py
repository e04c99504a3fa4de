"""Hyperparameter search for the caption decoder (Optuna), on cached encoder features.

Usage: python -m training.tune --dataset shapes --data data/shapes --out runs/tune --trials 20 --timeout 1800

The objective is held-out quality on the dev split, never the training loss: on synthetic
scenes the share of greedy captions with every object right, elsewhere corpus BLEU-4. Poor
trials are pruned on their per-epoch dev score. The first trial is the configuration the search
starts from, so the report shows the gain over it. The test split is never looked at.

Writes to --out: study.db (Optuna's SQLite storage: every trial, its parameters and scores; a
second run with the same --out resumes the study), trials.csv, best_config.json (give it to
`python -m training.train --config`), report.md and score.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .datasets import DatasetError
from .train import DataSettings, TrainConfig, add_dataset_arguments, evaluate_split, fit_decoder, prepare

STUDY_NAME = "decoder"


def objective_name(synthetic: bool) -> str:
    return "objects_right_all" if synthetic else "bleu4"


def suggest(trial, base: TrainConfig) -> TrainConfig:
    """The search space: a TrainConfig whose decoder settings Optuna picks."""
    use_weight_decay = trial.suggest_categorical("use_weight_decay", [False, True])
    return base.with_values(
        units=trial.suggest_categorical("units", [128, 256, 512]),
        embedding_dim=trial.suggest_categorical("embedding_dim", [64, 128, 256]),
        dropout=trial.suggest_float("dropout", 0.0, 0.5),
        image_dropout=trial.suggest_float("image_dropout", 0.0, 0.5),
        learning_rate=trial.suggest_float("learning_rate", 3e-4, 6e-3, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-4, 0.1, log=True) if use_weight_decay else 0.0,
        image_every_step=trial.suggest_categorical("image_every_step", [True, False]),
        feature_norm=trial.suggest_categorical("feature_norm", ["standardise", "l2-standardise"]),
    )


def params_of(config: TrainConfig) -> dict:
    """The search-space parameters that reproduce `config` (to enqueue it as a trial)."""
    flat = config.flat()
    params = {"use_weight_decay": config.weight_decay > 0, "learning_rate": config.learning_rate,
              **{k: flat[k] for k in ("units", "embedding_dim", "dropout", "image_dropout", "image_every_step",
                                      "feature_norm")}}
    if config.weight_decay > 0:
        params["weight_decay"] = config.weight_decay
    return params


def make_objective(prepared, base: TrainConfig, log):
    """An Optuna objective that trains one decoder and returns its dev-split quality."""
    import keras
    import optuna

    key = objective_name(prepared.scenes is not None)

    class ReportDevQuality(keras.callbacks.Callback):
        """Score the dev split after every epoch so the pruner can stop a poor trial early."""

        def __init__(self, trial, init_model, step_model):
            super().__init__()
            self.trial, self.init_model, self.step_model = trial, init_model, step_model
            self.pruned_at = None

        def on_epoch_end(self, epoch, logs=None):
            _, metrics = evaluate_split(prepared, self.init_model, self.step_model, "dev")
            self.trial.report(metrics[key], epoch)
            if self.trial.should_prune():
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    def objective(trial) -> float:
        config = suggest(trial, base)
        started = time.time()
        reporters = []

        def callbacks(init_model, step_model):
            reporters.append(ReportDevQuality(trial, init_model, step_model))
            return reporters

        fitted = fit_decoder(prepared, config, callbacks_for=callbacks, verbose=0)
        init_model, step_model, history = fitted.init_model, fitted.step_model, fitted.history
        seconds = time.time() - started
        trial.set_user_attr("epochs", len(history.history["loss"]))
        trial.set_user_attr("seconds", round(seconds, 1))
        pruned_at = reporters[0].pruned_at
        if pruned_at is not None:
            log(f"trial {trial.number}: pruned after epoch {pruned_at} ({seconds:.0f} s)")
            raise optuna.TrialPruned()
        _, metrics = evaluate_split(prepared, init_model, step_model, "dev")
        for name, value in metrics.items():
            trial.set_user_attr(name, value)
        log(f"trial {trial.number}: {key} {metrics[key]:.3f}, BLEU-4 {metrics['bleu4']:.3f} "
            f"({len(history.history['loss'])} epochs, {seconds:.0f} s)")
        return metrics[key]

    return objective


def trial_rows(study) -> list[dict]:
    """One flat row per finished trial: number, state, score, dev metrics, parameters."""
    rows = []
    for t in study.trials:
        if t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        row = {"trial": t.number, "state": t.state.name.lower(), "score": t.value}
        row.update({k: v for k, v in t.user_attrs.items()})
        row.update({f"param_{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


def write_results(study, base: TrainConfig, key: str, out: Path) -> dict:
    """trials.csv, best_config.json, report.md and score.png from the study."""
    rows = trial_rows(study)
    columns = sorted({k for r in rows for k in r}, key=lambda k: (not k.startswith(("trial", "state", "score")), k))
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    best = study.best_trial
    best_config = suggest(_Replay(best.params), base)
    baseline = next((t for t in study.trials if t.user_attrs.get("baseline") and t.value is not None), None)
    tuning = {
        "study": str(out / "study.db"), "objective": f"{key} on the dev split",
        "best_trial": best.number, "best_dev": {k: best.user_attrs.get(k) for k in (key, "bleu4")},
        "baseline_dev": ({k: baseline.user_attrs.get(k) for k in (key, "bleu4")} if baseline else None),
        "trials": {"complete": sum(r["state"] == "complete" for r in rows),
                   "pruned": sum(r["state"] == "pruned" for r in rows)},
    }
    result = {"config": best_config.flat(), "tuning": tuning}
    (out / "best_config.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(_report(rows, result, key))
    _plot(rows, key, out / "score.png")
    return result


class _Replay:
    """Stands in for a trial to rebuild the configuration of a finished one from its parameters."""

    def __init__(self, params: dict):
        self.params = params

    def suggest_categorical(self, name, choices):
        return self.params[name]

    def suggest_float(self, name, low, high, log=False):
        return self.params[name]


def _report(rows: list[dict], result: dict, key: str) -> str:
    tuning = result["tuning"]
    lines = ["# Decoder hyperparameter search", "",
             f"Objective: {tuning['objective']} (higher is better). "
             f"{tuning['trials']['complete']} trials complete, {tuning['trials']['pruned']} pruned.", ""]
    if tuning["baseline_dev"]:
        lines.append(f"Starting configuration (trial 0): {key} {tuning['baseline_dev'][key]:.3f}, "
                     f"BLEU-4 {tuning['baseline_dev']['bleu4']:.3f}.")
    lines += [f"Best (trial {tuning['best_trial']}): {key} {tuning['best_dev'][key]:.3f}, "
              f"BLEU-4 {tuning['best_dev']['bleu4']:.3f}.", "", "## Best configuration", "",
              "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in result["config"].items()]
    complete = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: -r["score"])[:10]
    params = sorted({k for r in complete for k in r if k.startswith("param_")})
    lines += ["", "## Top trials", "",
              "| trial | score | BLEU-4 | epochs | seconds | " + " | ".join(p[6:] for p in params) + " |",
              "| --- " * (5 + len(params)) + "|"]
    for r in complete:
        values = [_fmt(r.get(p, "")) for p in params]
        lines.append(f"| {r['trial']} | {r['score']:.3f} | {r.get('bleu4', 0):.3f} | {r.get('epochs', '')} | "
                     f"{r.get('seconds', '')} | " + " | ".join(values) + " |")
    lines += ["", "![score by trial](score.png)", ""]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _plot(rows: list[dict], key: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    complete = [r for r in rows if r["state"] == "complete"]
    ax.scatter([r["trial"] for r in complete], [r["score"] for r in complete], label="complete")
    pruned = [r for r in rows if r["state"] == "pruned"]
    if pruned:
        ax.scatter([r["trial"] for r in pruned], [0] * len(pruned), marker="x", color="grey", label="pruned")
    best, running = float("-inf"), []
    for r in sorted(complete, key=lambda r: r["trial"]):
        best = max(best, r["score"])
        running.append((r["trial"], best))
    if running:
        ax.step(*zip(*running), where="post", color="tab:green", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{key} (dev)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class StudySettings:
    """How the search runs (the tuner's own flags)."""

    out: Path                  # study folder, resumed when it exists
    trials: int = 20           # trials to run, at most
    timeout: float = 0         # stop starting trials after this many seconds; 0 = no limit
    warmup_epochs: int = 3     # epochs before a trial may be pruned
    seed: int = 0              # sampler seed
    quiet: bool = False        # no progress bar

    @classmethod
    def from_args(cls, args) -> "StudySettings":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def tune(data: DataSettings, base: TrainConfig, args: StudySettings, log=print) -> dict:
    """Run (or resume) the study and write its results; returns best_config.json's content."""
    import optuna

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare(data, base, log)
    key = objective_name(prepared.scenes is not None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{out / 'study.db'}", study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=min(8, max(1, args.trials // 3))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=args.warmup_epochs))
    if not study.trials:
        study.enqueue_trial(params_of(base), user_attrs={"baseline": True})
    log(f"searching: {args.trials} trials or {args.timeout} s, whichever ends first; objective {key} on dev")
    study.optimize(make_objective(prepared, base, log), n_trials=args.trials, timeout=args.timeout or None,
                   show_progress_bar=not args.quiet)
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        raise RuntimeError("no trial completed; give the search more time or trials")
    result = write_results(study, base, key, out)
    log(f"best: trial {result['tuning']['best_trial']}, {key} {result['tuning']['best_dev'][key]:.3f} on dev; "
        f"wrote {out / 'best_config.json'} and {out / 'report.md'}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Search decoder hyperparameters on held-out quality (Optuna).")
    add_dataset_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="study folder (resumed when it exists)")
    parser.add_argument("--config", type=Path, help="JSON settings the search starts from (trial 0)")
    parser.add_argument("--trials", type=int, default=20, help="number of trials (default 20)")
    parser.add_argument("--timeout", type=float, default=0, help="stop starting trials after this many seconds")
    parser.add_argument("--epochs", type=int, help="most epochs per trial (default: the starting config's)")
    parser.add_argument("--warmup-epochs", type=int, default=3, help="epochs before a trial may be pruned")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.trials < 1 or args.timeout < 0 or args.warmup_epochs < 0:
            raise ValueError("--trials must be at least 1, --timeout and --warmup-epochs at least 0")
        base = TrainConfig.from_file(args.config) if args.config else TrainConfig()
        if args.epochs is not None:
            base = replace(base, epochs=args.epochs)
        base.validate()
        tune(DataSettings.from_args(args), base, StudySettings.from_args(args))
    except (DatasetError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
