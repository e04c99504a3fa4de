"""Importing the classic notebooks' models: served greedy captions equal the notebook's own
predict-per-word loop, beam search works on them, what the tool read is recorded, models it
cannot map are refused in one line, and a malicious vocabulary pickle runs nothing."""
import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests

from benchmarks.server_process import GunicornServer
from tests.conftest import PYTHON, QUIET_TF, ROOT, run_cli

MODELS = {  # bundle name: (decoder file, vocabulary file)
    "lstm_h5": ("lstm_h5/model.h5", "lstm_h5/vocab.pkl"),
    "gru_keras": ("gru_keras/model.keras", "gru_keras/tokenizer.json"),
    "gru_unmasked": ("gru_unmasked/model.keras", "gru_unmasked/tokenizer.pkl"),
}


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("notebooks")
    result = subprocess.run([PYTHON, "-m", "benchmarks.notebook_models", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=900, env={**os.environ, **QUIET_TF})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def import_args(notebooks: Path, name: str, out: Path, *extra: str) -> list[str]:
    decoder, vocabulary = MODELS[name]
    return ["export.from_keras", "--decoder", str(notebooks / decoder), "--vocabulary", str(notebooks / vocabulary),
            "--encoder-model", str(notebooks / "encoder.keras"), "--preprocessing", "tf", "--image-size", "64",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def imported(notebooks, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx_models")
    bundles = {}
    for name in MODELS:  # parity on generated scenes: the held-out images stay unseen by the tool
        run_cli(*import_args(notebooks, name, root / name, "--parity-images", "8"))
        bundles[name] = root / name
    return bundles


def notebook_captions(notebooks: Path, name: str, images: list[Path]) -> list[str]:
    """What the notebook's own loop says for `images` (Keras, predict per word on the whole prefix)."""
    import keras

    from bundle.decoding import words_of
    from bundle.preprocess import keras_preprocessing, load_image
    from export.from_keras import load_keras_model, notebook_greedy
    from export.notebook_decoder import analyse
    from export.notebook_vocabulary import read_vocabulary

    decoder_file, vocabulary_file = MODELS[name]
    model = load_keras_model(notebooks / decoder_file, unsafe_lambda=False)
    decoder = analyse(model)
    vocab = read_vocabulary(notebooks / vocabulary_file, decoder.vocab_size)
    encoder = keras.models.load_model(notebooks / "encoder.keras")
    pixels = np.stack([load_image(p, keras_preprocessing("tf", 64)) for p in images])
    ids, _ = notebook_greedy(model, np.asarray(encoder(pixels)), decoder, vocab)
    return [" ".join(words_of(caption, vocab.words, vocab.special_tokens.values())) for caption in ids]


def test_served_greedy_captions_equal_the_notebook_loop(notebooks, imported):
    images = sorted((notebooks / "images").glob("*.jpg"))
    names = list(imported)
    server = GunicornServer({"CAPTION_BUNDLE": str(imported[names[0]]),
                             "CAPTION_EXTRA_BUNDLES": ",".join(str(imported[n]) for n in names[1:]),
                             "WEB_CONCURRENCY": "1"})
    try:
        server.wait_ready()
        for name in names:
            want = notebook_captions(notebooks, name, images)
            served = [requests.post(server.url + "/api/v1/captions", files={"image": path.read_bytes()},
                                    data={"model": name}, timeout=30).json()["captions"][0]["caption"]
                      for path in images]
            assert served == want, name
            assert len(set(want)) > 1, f"{name}: its captions do not depend on the image"
            beams = requests.post(server.url + "/api/v1/captions", files={"image": images[0].read_bytes()},
                                  data={"model": name, "beam_size": "3"}, timeout=30)
            assert beams.status_code == 200 and beams.json()["captions"][0]["tokens"]
        assert "bundle gru_unmasked: decoder kind whole_prefix" in server.output()  # the log says it is slower
    finally:
        server.stop()


def test_the_manifest_records_what_the_tool_read(imported):
    for name, kind, source in (("lstm_h5", "step", "wordtoix dict"), ("gru_keras", "step", "Tokenizer JSON"),
                               ("gru_unmasked", "whole_prefix", "Tokenizer pickle")):
        manifest = json.loads((imported[name] / "bundle.json").read_text())
        found = manifest["provenance"]["imported"]
        assert (found["decoder_kind"], found["vocabulary"], found["masking"]) == (kind, source, kind == "step")
        assert (found["start_word"], found["end_word"], found["max_length"]) == ("startseq", "endseq", 12)
        assert manifest["preprocessing"] == found["preprocessing"] and manifest["preprocessing"]["resample"] == "nearest"
        assert manifest["decoder"]["kind"] == kind and kind in manifest["description"]
        for variant in ("onnx", "optimized"):
            assert manifest["provenance"]["parity"][variant]["greedy_captions_identical"] == "8/8"
    state = [e["key"] for e in json.loads((imported["gru_unmasked"] / "bundle.json").read_text())
             ["graphs"]["decoder_init"]["outputs"]]
    assert state == ["prefix", "context"]


def test_a_malicious_vocabulary_pickle_runs_nothing(notebooks, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "tokenizer.pkl"
    evil.write_bytes(pickle.dumps({"word_index": Payload()}))
    args = import_args(notebooks, "gru_keras", tmp_path / "out")
    args[args.index("--vocabulary") + 1] = str(evil)
    result = run_cli(*args, check=False)
    assert result.returncode == 2
    assert "refused without running it" in result.stderr.strip().splitlines()[-1]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_models_the_tool_cannot_map_are_refused_in_one_line(notebooks, tmp_path):
    import keras
    from keras import layers

    features, words = keras.Input((32,)), keras.Input((12,))
    text = layers.Bidirectional(layers.LSTM(8))(layers.Embedding(43, 8, mask_zero=True)(words))
    merged = layers.add([layers.Dense(16)(features), text])
    keras.Model([features, words], layers.Dense(43, activation="softmax")(merged)).save(tmp_path / "bi.keras")
    args = import_args(notebooks, "gru_keras", tmp_path / "out")
    args[args.index("--decoder") + 1] = str(tmp_path / "bi.keras")
    result = run_cli(*args, check=False)
    assert result.returncode == 2
    assert "bidirectional RNNs cannot generate word by word" in result.stderr.strip().splitlines()[-1]


def test_bad_arguments_exit_2_with_one_line(notebooks, tmp_path):
    result = run_cli("export.from_keras", "--decoder", "x.h5", "--vocabulary", "v.pkl", "--encoder", "vgg16",
                     "--out", str(tmp_path / "o"), check=False)
    assert result.returncode == 2 and "--encoder needs --encoder-weights" in result.stderr.strip().splitlines()[-1]


def test_a_lambda_layer_is_not_deserialised_without_unsafe_lambda(notebooks, tmp_path):
    import keras
    from keras import layers

    features, words = keras.Input((32,)), keras.Input((12,))
    text = layers.LSTM(8)(layers.Embedding(43, 8, mask_zero=True)(words))
    merged = layers.Lambda(lambda pair: pair[0] + pair[1])([layers.Dense(8)(features), text])
    keras.Model([features, words], layers.Dense(43, activation="softmax")(merged)).save(tmp_path / "lambda.keras")
    args = import_args(notebooks, "gru_keras", tmp_path / "out")
    args[args.index("--decoder") + 1] = str(tmp_path / "lambda.keras")
    refused = run_cli(*args, check=False)
    assert refused.returncode == 2 and "Keras cannot load it" in refused.stderr.strip().splitlines()[-1]
    loaded = run_cli(*args, "--unsafe-lambda", check=False)  # loaded, and then not mapped: it could do anything
    assert loaded.returncode == 2 and "Lambda layers run arbitrary code" in loaded.stderr.strip().splitlines()[-1]


def test_named_encoders_load_a_local_weights_file_and_refuse_another(tmp_path):
    import keras

    from export.keras_encoders import build_encoder

    keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                   input_shape=(224, 224, 3)).save_weights(tmp_path / "mobilenet.weights.h5")
    encoder = build_encoder("mobilenet_v2", tmp_path / "mobilenet.weights.h5")
    assert tuple(encoder.outputs[0].shape) == (None, 1280)
    with pytest.raises(ValueError, match="does not fit ResNet50"):
        build_encoder("resnet50", tmp_path / "mobilenet.weights.h5")
    with pytest.raises(ValueError, match="no such file"):
        build_encoder("vgg16", tmp_path / "missing.h5")
