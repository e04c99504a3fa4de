"""The hyperparameter search on a tiny cached feature set: study, report and a loadable best configuration."""
import csv
import json

import optuna

from tests.conftest import feature_cache, run_cli
from training.train import TrainConfig


def test_tiny_search_writes_study_report_and_loadable_best_config(shapes_dataset, trained_run, tmp_path):
    out = tmp_path / "tune"
    common = ("--dataset", "shapes", "--data", str(shapes_dataset), "--out", str(out),
              "--cache-dir", str(feature_cache(trained_run)), "--epochs", "2", "--warmup-epochs", "1", "--quiet")
    run_cli("training.tune", *common, "--trials", "2")

    study = optuna.load_study(study_name="decoder", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 2
    assert study.trials[0].user_attrs["baseline"] is True  # the starting configuration is trial 0
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"score", "bleu4", "objects_right_all", "param_units"} <= set(rows[0])
    report = (out / "report.md").read_text()
    assert "## Best configuration" in report and "## Top trials" in report and "objects_right_all" in report
    assert (out / "score.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = json.loads((out / "best_config.json").read_text())
    assert best["tuning"]["best_dev"]["objects_right_all"] == study.best_value
    config = TrainConfig.from_file(out / "best_config.json")
    config.validate()

    # The training CLI takes the best configuration as it is, and records where it came from.
    run_dir = tmp_path / "run"
    run_cli("training.train", "--dataset", "shapes", "--data", str(shapes_dataset), "--out", str(run_dir),
            "--cache-dir", str(feature_cache(trained_run)), "--config", str(out / "best_config.json"),
            "--epochs", "1", "--quiet")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["decoder"]["units"] == config.decoder.units
    assert run["decoder"]["feature_norm"] == config.decoder.feature_norm
    assert run["training"] == config.with_values(epochs=1).flat()  # flat, as --config files are
    assert run["notes"]["tuning"]["best_trial"] == best["tuning"]["best_trial"]

    # A second run resumes the same study.
    run_cli("training.tune", *common, "--trials", "1")
    assert len(optuna.load_study(study_name="decoder", storage=f"sqlite:///{out / 'study.db'}").trials) == 3


def test_bad_search_settings_exit_with_one_line(tmp_path):
    result = run_cli("training.tune", "--dataset", "shapes", "--data", str(tmp_path), "--out", str(tmp_path / "t"),
                     "--trials", "0", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --trials")
