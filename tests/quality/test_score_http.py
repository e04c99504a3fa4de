"""The scorer that `make quality` runs: it fails a model below the demo's documented targets."""
import re

from harness.server_process import ROOT

from .score_http import OTHER_DRAWN_TARGET, main


def test_require_fails_a_model_below_the_targets(server, capsys):
    """The session's 6-epoch test model names few scenes' objects right: far below the demo's targets."""
    assert main(["--url", server.url, "--require"]) == 1
    out, err = capsys.readouterr()
    right, scenes = map(int, re.search(r"other-drawn: (\d+)/(\d+) right", out).groups())
    assert right < OTHER_DRAWN_TARGET * scenes
    assert "error: below the demo's targets" in err
    assert main(["--url", server.url]) == 0  # without --require it only reports


def test_make_quality_requires_the_targets():
    recipe = re.search(r"^quality:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "tests.quality.score_http" in recipe and "--require" in recipe
    assert "exit $$status" in recipe  # the figures are recorded and the docs regenerated before it fails
