"""The first-run benchmark's page and its refusals (the clone-and-build itself is run by hand)."""
import pytest

from benchmarks.build_time import main, markdown


def test_the_page_shows_each_core_counts_run_by_stage():
    run = {"sgemm_gflops": 225.5, "sgemm_gflops_after": 224.8, "commit": "8c43b2403031", "ready_s": 370.6,
           "stages_s": {"install": 57.5, "scenes": 10.2, "train": 268.8, "export": 32.3, "serve": 1.8}}
    page = markdown({"budget_s": 480, "machine": "x86_64, 2 cores", "runs": {"1 of 2": run}})
    assert "| cores | sgemm GFLOP/s | install | scenes | train | export | serve | ready | scaled to 200 GFLOP/s | commit |" in page
    # 57.5 + (370.6 - 57.5) * 225.15 / 200 = 410
    assert "| 1 of 2 | 226 / 225 | 58 | 10 | 269 | 32 | 2 | **371** | 410 | 8c43b24 |" in page
    assert "budget 480 s" in page


@pytest.mark.parametrize("argv", [["--cores", "99"], ["--cores", "-1"]])
def test_impossible_core_counts_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "--cores must be between 1 and" in capsys.readouterr().err
