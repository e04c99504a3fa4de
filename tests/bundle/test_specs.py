"""The parity tolerance the docs promise, pinned, and applied per unit of the encoder's largest feature."""
import re
from pathlib import Path

import numpy as np
import pytest

from bundle.specs import PARITY_ATOL, GraphSpec

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_tolerance_is_the_one_the_docs_promise():
    promised = re.findall(r"within (\de-\d)", (DOCS / "serve-your-own-model.md").read_text())
    assert promised and {float(p) for p in promised} == {PARITY_ATOL} == {1e-4}


def test_the_encoders_tolerance_is_per_unit_of_its_largest_feature():
    encoder = GraphSpec("encoder", (), (), rtol=0.0, atol_per_unit_of_largest=True)
    small = np.linspace(-4e-3, 4e-3, 2048, dtype=np.float32)  # a random InceptionV3's scale
    assert encoder.effective_atol(small) == pytest.approx(PARITY_ATOL * 4e-3)
    assert encoder.close(small + 3e-7, small)
    assert not encoder.close(small + 1e-5, small)  # 2.5e-3 of the largest: passed when atol had a floor of 1e-4
    large = small * 1000                             # a learned part's standardised features
    assert encoder.effective_atol(large) == pytest.approx(PARITY_ATOL * 4.0)
    decoder = GraphSpec("decoder_step", (), ())
    assert decoder.effective_atol(small) == PARITY_ATOL  # other graphs: plain atol
