"""The attention picture: each word's weights over the map, recomputed from the step model's layers."""
import json
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from tests.conftest import run_cli
from training.attention_map import attention_weights


def test_each_words_weights_are_a_distribution_over_the_map(attention_run):
    from bundle.preprocess import load_image

    run = json.loads((attention_run / "run.json").read_text())
    models = {role: keras.models.load_model(attention_run / f"{role}.keras", compile=False)
              for role in ("encoder", "decoder_init", "decoder_step")}
    heldout = json.loads((attention_run / "heldout.json").read_text())[0]
    image = Path(heldout["image"])

    features = np.asarray(models["encoder"](load_image(image, run["preprocessing"])[None]))
    special = run["special_tokens"]
    tokens, weights = attention_weights(models["decoder_init"], models["decoder_step"], features, special["start"],
                                        special["end"], run["max_length"])
    assert weights.shape == (len(tokens), 64)
    np.testing.assert_allclose(weights.sum(1), 1, rtol=1e-5)
    assert (weights >= 0).all()
    words = json.loads((attention_run / "vocab.json").read_text())["words"]
    assert " ".join(words[t] for t in tokens) == heldout["keras_greedy"]  # the caption training's evaluation gave


def test_the_command_draws_a_picture_and_refuses_a_pooled_run(attention_run, trained_run, shapes_dataset, tmp_path):
    image = sorted((shapes_dataset / "Images").iterdir())[0]
    run_cli("training.attention_map", "--run", str(attention_run), "--image", str(image), "--out", str(tmp_path / "a.png"))
    assert Image.open(tmp_path / "a.png").size[0] > 300
    refused = run_cli("training.attention_map", "--run", str(trained_run), "--image", str(image), "--out",
                      str(tmp_path / "b.png"), check=False)
    assert refused.returncode == 2 and "pooled decoder" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "b.png").exists()
