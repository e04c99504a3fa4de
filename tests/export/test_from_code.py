"""Importing captioners defined by their notebook's code: keras.io's "Image captioning" Transformer and
TensorFlow's "Image captioning with visual attention" GRU, written as their users have them
(training/tutorials), trained briefly with their own training steps. The served greedy captions equal
each tutorial's own loop, written here as the tutorials write it; the attention model's step says
where it looked; loading code without --trust-code is refused."""
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PYTHON, QUIET_TF, ROOT

TUTORIALS = ROOT / "training" / "tutorials"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tutorials")
    result = subprocess.run([PYTHON, "-m", "training.tutorials.train", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=900, env={**os.environ, **QUIET_TF})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


ARGS = {
    "keras_io": ["--code", str(TUTORIALS / "keras_io_serving.py"), "--weights", "{out}/keras_io/model.weights.h5",
                 "--vocabulary", "{out}/keras_io/vocabulary.json", "--preprocessing", "raw", "--image-size", "64",
                 "--max-length", "12"],
    "tf_attention": ["--code", str(TUTORIALS / "tf_attention_serving.py"), "--weights", "{out}/tf_attention/ckpt-1",
                     "--vocabulary", "{out}/tf_attention/vocabulary.json", "--preprocessing", "tf",
                     "--image-size", "139", "--max-length", "16"],
}


@pytest.fixture(scope="module")
def imported(trained, tmp_path_factory) -> dict[str, Path]:
    from export import from_code

    root = tmp_path_factory.mktemp("onnx_models")
    commands = [[*(a.format(out=trained) for a in args), "--trust-code", "--parity-images", "6",
                 "--out", str(root / name)] for name, args in ARGS.items()]
    with ProcessPoolExecutor(len(commands), mp_context=get_context("spawn")) as pool:  # one import per core
        assert dict(zip(ARGS, pool.map(from_code.main, commands))) == dict.fromkeys(ARGS, 0)
    return {name: root / name for name in ARGS}


def engine_and_pixels(bundle_dir: Path, images: list[Path]):
    from bundle.format import load_bundle
    from bundle.preprocess import load_image
    from server.engine import CaptionEngine

    bundle = load_bundle(bundle_dir)
    return CaptionEngine(bundle), np.stack([load_image(p, bundle.preprocessing) for p in images])


def served_captions(engine, pixels: np.ndarray, **options) -> list:
    """Each image's best hypothesis as the server decodes it: (caption, hypothesis)."""
    return [(" ".join(engine.words(h[0].tokens)), h[0]) for h in engine.caption(pixels, **options).hypotheses]


def keras_io_loop(trained: Path, images: np.ndarray) -> list[str]:
    """generate_caption() as keras.io writes it, with argmax, on each image."""
    import json

    import tensorflow as tf

    sys.path.insert(0, str(TUTORIALS))
    import keras_io_serving

    model = keras_io_serving.build(str(trained / "keras_io" / "model.weights.h5"))
    vocab = json.loads((trained / "keras_io" / "vocabulary.json").read_text())
    word_id = {w: i for i, w in enumerate(vocab)}
    captions = []
    for image in images:
        encoded_img = model.encoder(model.cnn_model(image[None]), training=False)
        decoded = ["<start>"]
        for i in range(12):
            tokenized = np.zeros((1, 12), np.int64)
            tokenized[0, :len(decoded)] = [word_id[w] for w in decoded]
            predictions = model.decoder(tokenized, encoded_img, training=False, mask=tf.math.not_equal(tokenized, 0))
            sampled = vocab[int(np.argmax(predictions[0, i, :]))]
            if sampled == "<end>":
                break
            decoded.append(sampled)
        captions.append(" ".join(decoded[1:]))
    return captions


def tf_attention_loop(trained: Path, images: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """evaluate() as TensorFlow's tutorial writes it, with argmax for its sampling."""
    import json

    import tensorflow as tf

    sys.path.insert(0, str(TUTORIALS))
    import tf_attention_serving

    image_model, encoder, decoder = tf_attention_serving.build(str(trained / "tf_attention" / "ckpt-1"))
    vocab = json.loads((trained / "tf_attention" / "vocabulary.json").read_text())
    captions, plots = [], []
    for image in images:
        hidden = decoder.reset_state(batch_size=1)
        img_tensor_val = image_model(image[None])
        img_tensor_val = tf.reshape(img_tensor_val, (img_tensor_val.shape[0], -1, img_tensor_val.shape[3]))
        features = encoder(img_tensor_val)
        dec_input = tf.expand_dims([vocab.index("<start>")], 0)
        result, plot = [], []
        for _ in range(16):
            predictions, hidden, attention_weights = decoder(dec_input, features, hidden)
            plot.append(tf.reshape(attention_weights, (-1,)).numpy())
            predicted_id = int(tf.argmax(predictions[0]).numpy())
            if vocab[predicted_id] == "<end>":
                break
            result.append(vocab[predicted_id])
            dec_input = tf.expand_dims([predicted_id], 0)
        captions.append(" ".join(result))
        plots.append(np.array(plot))
    return captions, plots


def held_out(trained: Path) -> list[Path]:
    return sorted((trained / "images").glob("*.jpg"))


def test_keras_io_transformer_serves_its_own_loops_captions(trained, imported):
    engine, pixels = engine_and_pixels(imported["keras_io"], held_out(trained))
    want = keras_io_loop(trained, pixels)
    served = served_captions(engine, pixels)
    assert [caption for caption, _ in served] == want
    assert len(set(want)) > 1, "the captions should depend on the image"
    found = engine.bundle.manifest["provenance"]["imported"]
    assert (found["decoder_kind"], found["padding"], found["scores"]) == ("whole_prefix", "post", "logits")


def test_tf_attention_tutorial_serves_its_own_loops_captions_and_attention(trained, imported):
    engine, pixels = engine_and_pixels(imported["tf_attention"], held_out(trained))
    want, plots = tf_attention_loop(trained, pixels)
    served = served_captions(engine, pixels, attention=True)
    assert [caption for caption, _ in served] == want
    found = engine.bundle.manifest["provenance"]["imported"]
    assert (found["decoder_kind"], found["attention_positions"]) == ("step", 9)
    assert engine.has_attention and engine.bundle.attention_grid == (3, 3)
    for (_, hypothesis), plot in zip(served, plots):
        attention = np.asarray(hypothesis.attention)
        assert np.allclose(attention.sum(-1), 1, atol=1e-4)
        np.testing.assert_allclose(attention, plot[:len(attention)], atol=1e-4)


def test_the_api_serves_both_and_the_attention_tutorials_weights(trained, imported):
    from server.app import create_app
    from server.config import Config

    image = held_out(trained)[0]
    engine, pixels = engine_and_pixels(imported["tf_attention"], [image])
    (want, weights), = served_captions(engine, pixels, attention=True)
    client = create_app(Config(bundle=imported["tf_attention"], extra_bundles=str(imported["keras_io"]),
                               warmup=False)).test_client()
    response = client.post("/api/v1/captions?attention=true", data={"image": (image.open("rb"), image.name)})
    assert response.status_code == 200, response.json
    caption = response.json["captions"][0]
    assert caption["caption"] == want and caption["attention"]["grid"] == [3, 3]
    np.testing.assert_allclose(caption["attention"]["weights"], weights.attention, atol=1e-4)
    keras_io, = served_captions(*engine_and_pixels(imported["keras_io"], [image]))
    response = client.post("/api/v1/captions", data={"image": (image.open("rb"), image.name), "model": "keras_io"})
    assert response.status_code == 200 and response.json["captions"][0]["caption"] == keras_io[0]


def test_beam_search_answers_on_both(trained, imported):
    for bundle in imported.values():
        engine, pixels = engine_and_pixels(bundle, held_out(trained)[:2])
        for caption, hypothesis in served_captions(engine, pixels, beam_size=3):
            assert caption and hypothesis.log_prob <= 0


def test_code_is_not_run_without_trust_code(trained, tmp_path):
    args = [a.format(out=trained) for a in ARGS["keras_io"]]
    result = subprocess.run([PYTHON, "-m", "export.from_code", *args, "--out", str(tmp_path / "b")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--trust-code" in result.stderr and not (tmp_path / "b").exists()


TINY_CODE = '''
import numpy as np
import tensorflow as tf
from tensorflow import keras

def build(weights):
    image = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(8)])
    embed = keras.layers.Embedding(12, 8)
    head = keras.layers.Dense(12)
    if weights != "random":
        image.set_weights([np.full(w.shape, 0.01, np.float32) for w in image.get_weights()])
    return image, embed, head

def encode(model, images):
    return model[0](images)

def next_word(model, memory, words):
    return model[2](tf.reduce_sum(model[1](words), axis=1) + memory)
'''


def tiny_args(tmp_path, weights: str) -> list[str]:
    (tmp_path / "tiny.py").write_text(TINY_CODE)
    (tmp_path / "vocab.json").write_text('["", "[UNK]", "<start>", "<end>", "a", "b", "c", "d", "e", "f", "g", "h"]')
    return ["--code", str(tmp_path / "tiny.py"), "--trust-code", "--weights", weights, "--vocabulary",
            str(tmp_path / "vocab.json"), "--preprocessing", "raw", "--image-size", "16", "--max-length", "5",
            "--parity-images", "2", "--out", str(tmp_path / "bundle")]


def test_a_build_that_loads_no_weights_is_refused(tmp_path, capfd):
    from export import from_code

    assert from_code.main(tiny_args(tmp_path, "random")) == 2
    error = capfd.readouterr().err.strip()
    assert error.startswith("error: build() gives another model each time it runs") and "\n" not in error
    assert not (tmp_path / "bundle").exists()


def test_a_code_file_without_the_functions_is_refused_in_one_line(tmp_path, capfd):
    from export import from_code

    args = tiny_args(tmp_path, "fixed")
    assert from_code.main([*args, "--next-word", "predict"]) == 2
    assert capfd.readouterr().err.strip() == (f"error: --code {tmp_path / 'tiny.py'} defines no predict (or "
                                               "initial_state and step); see python -m export.from_code --help")
    assert from_code.main(args) == 0   # the same file with its own names imports
