import json

from PIL import Image

from training.curves import main


def write_run(folder, curve):
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"bleu4": 0.5, "learning_curve": curve}))
    return folder


def test_curves_of_two_runs_are_drawn(tmp_path):
    a = write_run(tmp_path / "a", [{"epoch": 1, "seconds": 10.0, "objects_right_all": 0.2, "val_loss": 1.0},
                                   {"epoch": 2, "seconds": 20.0, "objects_right_all": 0.4, "val_loss": 0.8}])
    b = write_run(tmp_path / "b", [{"epoch": 1, "seconds": 5.0, "objects_right_all": 0.1, "val_loss": 1.2}])
    assert main([str(a), str(b), "--labels", "attention", "pooled", "--out", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size[0] > 400


def test_runs_without_a_curve_or_of_other_metrics_are_refused(tmp_path, capsys):
    old = write_run(tmp_path / "old", [])
    assert main([str(old), "--out", str(tmp_path / "c.png")]) == 2
    real = write_run(tmp_path / "real", [{"epoch": 1, "seconds": 1.0, "bleu4": 0.3, "val_loss": 2.0}])
    synthetic = write_run(tmp_path / "syn", [{"epoch": 1, "seconds": 1.0, "objects_right_all": 0.3, "val_loss": 2.0}])
    assert main([str(real), str(synthetic), "--out", str(tmp_path / "c.png")]) == 2
    assert main([str(real), "--labels", "x", "y", "--out", str(tmp_path / "c.png")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert not (tmp_path / "c.png").exists()


def test_the_curves_are_written_as_figures_and_a_table(tmp_path):
    a = write_run(tmp_path / "a", [{"epoch": 1, "seconds": 10.0, "objects_right_all": 0.2, "val_loss": 1.0},
                                   {"epoch": 2, "seconds": 20.0, "objects_right_all": 0.4, "val_loss": 0.8}])
    b = write_run(tmp_path / "b", [{"epoch": 1, "seconds": 5.0, "objects_right_all": 0.1, "val_loss": 1.2}])
    results = tmp_path / "curves.json"
    assert main([str(a), str(b), "--labels", "learned", "trunk", "--out", str(tmp_path / "c.png"), "--no-seconds",
                 "--results", str(results), "--note", "two runs"]) == 0
    figures = json.loads(results.read_text())
    assert figures["metric"] == "objects_right_all" and [p["epoch"] for p in figures["curves"]["learned"]] == [1, 2]
    table = results.with_suffix(".md").read_text()
    assert "| epoch | learned | trunk |" in table and "| 2 | 0.400 |  |" in table and "(two runs)" in table
    assert Image.open(tmp_path / "c.png").size[0] < 600  # one panel: by epoch only
