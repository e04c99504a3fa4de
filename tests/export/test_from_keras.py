"""Importing the classic notebooks' models (the zoo of training.notebook_zoo: the four places to put
the image, stacked RNNs, per-example layers, masked and not, tf.keras .h5, Keras 3 .h5 and .keras):
served greedy captions equal each model's own predict-per-word loop in the Keras that wrote it,
beam search works on them, what the tool read is recorded, models it cannot read are refused in one
line, and a malicious vocabulary pickle runs nothing."""
import json
import os
import pickle
import subprocess
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import requests

from harness.server_process import GunicornServer
from tests.conftest import PYTHON, QUIET_TF, ROOT, run_cli


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("notebooks")
    result = subprocess.run([PYTHON, "-m", "training.notebook_zoo", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=900, env={**os.environ, **QUIET_TF})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def zoo(notebooks: Path) -> dict:
    return json.loads((notebooks / "zoo.json").read_text())["models"]


def import_args(notebooks: Path, name: str, out: Path, *extra: str) -> list[str]:
    entry = zoo(notebooks)[name]
    return ["--decoder", str(notebooks / entry["decoder"]), "--vocabulary", str(notebooks / entry["vocabulary"]),
            "--encoder-model", str(notebooks / "encoder.keras"), "--preprocessing", "tf", "--image-size", "64",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def imported(notebooks, tmp_path_factory) -> dict[str, Path]:
    """Every zoo model imported, in one process per core (a conversion keeps one core busy)."""
    from export import from_keras

    root = tmp_path_factory.mktemp("onnx_models")
    names = list(zoo(notebooks))  # parity on generated scenes: the held-out images stay unseen by the tool
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=get_context("spawn")) as pool:
        codes = pool.map(from_keras.main, [import_args(notebooks, n, root / n, "--parity-images", "8") for n in names])
        assert dict(zip(names, codes)) == dict.fromkeys(names, 0)
    return {name: root / name for name in names}


def notebook_captions(notebooks: Path, name: str, images: list[Path]) -> list[str]:
    """What the notebook's own loop says for `images`: predict per word on the whole padded prefix,
    in the Keras that wrote the model (tf.keras itself for its .h5 files, Keras 3 otherwise)."""
    import keras

    from bundle.decoding import words_of
    from bundle.preprocess import keras_preprocessing, load_image
    from export.from_keras import notebook_greedy
    from export.keras_files import load_keras_model
    from export.notebook_decoder import analyse
    from export.notebook_vocabulary import read_vocabulary

    entry = zoo(notebooks)[name]
    decoder = analyse(load_keras_model(notebooks / entry["decoder"]))
    if entry["framework"] == "tf_keras":
        import tf_keras

        model = tf_keras.models.load_model(notebooks / entry["decoder"], compile=False)
    else:  # as Keras 3 wrote it (a Keras 3 .h5 needs its NotEqual operations named, see keras_files)
        model = load_keras_model(notebooks / entry["decoder"])
    vocab = read_vocabulary(notebooks / entry["vocabulary"], decoder.vocab_size)
    encoder = keras.models.load_model(notebooks / "encoder.keras")
    pixels = np.stack([load_image(p, keras_preprocessing("tf", 64)) for p in images])
    ids, _ = notebook_greedy(model, np.asarray(encoder(pixels)), decoder, vocab)
    return [" ".join(words_of(caption, vocab.words, vocab.special_tokens.values())) for caption in ids]


def test_served_greedy_captions_equal_each_notebook_loop(notebooks, imported):
    images = sorted((notebooks / "images").glob("*.jpg"))
    names = list(imported)
    server = GunicornServer({"CAPTION_BUNDLE": str(imported[names[0]]),
                             "CAPTION_EXTRA_BUNDLES": ",".join(str(imported[n]) for n in names[1:]),
                             "WEB_CONCURRENCY": "1"})
    try:
        server.wait_ready(timeout=180)
        for name in names:
            want = notebook_captions(notebooks, name, images)
            served = [requests.post(server.url + "/api/v1/captions", files={"image": path.read_bytes()},
                                    data={"model": name}, timeout=30).json()["captions"][0]["caption"]
                      for path in images]
            assert served == want, name
            # A model that sees the image before the padding (init- or pre-inject) and then reads the
            # pads can forget it before the first word, so its own loop may say one caption for every
            # image; the rest must not.
            entry = zoo(notebooks)[name]
            if not (entry["kind"] == "whole_prefix" and entry["architecture"] in ("init-inject", "pre-inject")):
                assert len(set(want)) > 1, f"{name}: its captions do not depend on the image"
            beams = requests.post(server.url + "/api/v1/captions", files={"image": images[0].read_bytes()},
                                  data={"model": name, "beam_size": "3"}, timeout=30)
            assert beams.status_code == 200 and beams.json()["captions"][0]["tokens"], name
        assert "bundle merge_gru_unmasked: decoder kind whole_prefix" in server.output()  # the log says it is slower
        # The tool's loop against one written as the notebooks write it, on the Keras 3 models
        # with a next-word output that a pre-padded prefix feeds (most notebooks' own form).
        classic = [n for n, e in zoo(notebooks).items() if e["decoder"].endswith(".keras")
                   and "sequence" not in e["options"] and "transformer" not in e["options"]]
        assert len(classic) >= 6
        for name in classic:
            want = as_the_notebooks_write_it(notebooks, name, imported[name], images[:4])
            served = [requests.post(server.url + "/api/v1/captions", files={"image": path.read_bytes()},
                                    data={"model": name}, timeout=30).json()["captions"][0]["caption"]
                      for path in images[:4]]
            assert served == want, name
    finally:
        server.stop()


def as_the_notebooks_write_it(notebooks: Path, name: str, bundle: Path, images: list[Path]) -> list[str]:
    """The classic notebooks' greedySearch, written here apart from the tool: "startseq", then for
    each of max_length steps the word ids so far, pre-padded with zeros (pad_sequences' default,
    which keeps the newest max_length ids), the argmax of the model's output, and a stop at the
    end word or at an id their ixtoword lacks (padding)."""
    import keras

    from bundle.preprocess import keras_preprocessing, load_image

    model = keras.models.load_model(notebooks / zoo(notebooks)[name]["decoder"], compile=False)
    encoder = keras.models.load_model(notebooks / "encoder.keras", compile=False)
    vocab = json.loads((bundle / "vocab.json").read_text())
    ixtoword = dict(enumerate(vocab["words"]))
    del ixtoword[0]
    wordtoix = {word: ix for ix, word in ixtoword.items()}
    start, end = (vocab["words"][vocab["special_tokens"][k]] for k in ("start", "end"))
    lengths = [i.shape[1] for i in model.inputs if len(i.shape) == 2]
    captions = []
    for path in images:
        photo = np.asarray(encoder(load_image(path, keras_preprocessing("tf", 64))[None]))
        photo_first = model.inputs[0].shape[1:] == photo.shape[1:]
        max_length = next(n for n in lengths if (n,) != photo.shape[1:])
        in_text = start
        for _ in range(max_length):
            sequence = [wordtoix[w] for w in in_text.split() if w in wordtoix][-max_length:]
            padded = np.array([[0] * (max_length - len(sequence)) + sequence])
            yhat = int(np.argmax(model([photo, padded] if photo_first else [padded, photo], training=False)))
            if yhat not in ixtoword:
                break
            in_text += " " + ixtoword[yhat]
            if ixtoword[yhat] == end:
                break
        words = in_text.split()[1:]
        captions.append(" ".join(words[:-1] if words and words[-1] == end else words))
    return captions


def test_the_import_refuses_a_decoder_whose_onnx_differs(notebooks, imported):
    """The import's parity gate, given the bundle's own graphs with the step's output bias moved by
    a little noise (the kind of slip a converter makes), refuses: the probabilities no longer match."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from bundle.preprocess import keras_preprocessing, load_image
    from bundle.specs import GraphSpec
    from export.from_keras import ParityError, check_import_parity, keras_features
    from export.keras_files import load_keras_model
    from export.notebook_decoder import analyse
    from export.notebook_vocabulary import read_vocabulary

    name = "merge_lstm_word_list"
    bundle, entry = imported[name], zoo(notebooks)[name]
    manifest = json.loads((bundle / "bundle.json").read_text())
    model = load_keras_model(notebooks / entry["decoder"])
    decoder = analyse(model)
    vocab = read_vocabulary(notebooks / entry["vocabulary"], decoder.vocab_size)
    images_paths = sorted((notebooks / "images").glob("*.jpg"))[:4]
    images = np.stack([load_image(p, keras_preprocessing("tf", 64)) for p in images_paths])
    import keras

    features = keras_features(keras.models.load_model(notebooks / "encoder.keras", compile=False), images)

    def sessions(step: bytes):
        graphs = {role: (bundle / graph["file"]).read_bytes() for role, graph in manifest["graphs"].items()}
        return {role: ort.InferenceSession(step if role == "decoder_step" else data, providers=["CPUExecutionProvider"])
                for role, data in graphs.items()}

    step = onnx.load(bundle / manifest["graphs"]["decoder_step"]["file"])
    encoder_spec = GraphSpec("encoder", (), (), atol_per_unit_of_largest=True)
    names = [p.name for p in images_paths]
    check_import_parity(features, model, decoder, sessions(step.SerializeToString()), manifest["graphs"], images,
                        names, vocab, encoder_spec, log=lambda m: None)  # as imported: passes
    bias = max((t for t in step.graph.initializer if len(t.dims) == 1 and t.dims[0] == decoder.vocab_size),
               key=lambda t: t.name)
    moved = numpy_helper.to_array(bias) + np.random.default_rng(0).normal(0, 0.05, bias.dims).astype(np.float32)
    bias.CopyFrom(numpy_helper.from_array(moved, bias.name))
    with pytest.raises(ParityError, match="next-word probabilities differ"):
        check_import_parity(features, model, decoder, sessions(step.SerializeToString()), manifest["graphs"], images,
                            names, vocab, encoder_spec, log=lambda m: None)


def test_the_manifest_records_what_the_tool_read(notebooks, imported):
    sources = {"wordtoix": "wordtoix dict", "tokenizer_json": "Tokenizer JSON", "tokenizer_pickle": "Tokenizer pickle",
               "wordtoix_json": "wordtoix JSON", "word_list_json": "word list JSON"}
    for name, entry in zoo(notebooks).items():
        manifest = json.loads((imported[name] / "bundle.json").read_text())
        found = manifest["provenance"]["imported"]
        assert (found["architecture"], found["decoder_kind"]) == (entry["architecture"], entry["kind"]), name
        assert found["vocabulary"] == sources[entry["vocabulary_format"]]
        words = ("<start>", "<end>") if entry["vocabulary_format"] == "word_list_json" else ("startseq", "endseq")
        assert (found["start_word"], found["end_word"], found["max_length"]) == (*words, 12)   # found, not given
        assert manifest["preprocessing"] == found["preprocessing"] and manifest["preprocessing"]["resample"] == "nearest"
        assert manifest["decoder"]["kind"] == entry["kind"] and entry["kind"] in manifest["description"]
        assert ("why_whole_prefix" in found) == (entry["kind"] == "whole_prefix")
        for variant in ("onnx", "optimized"):
            assert manifest["provenance"]["parity"][variant]["greedy_captions_identical"] == "8/8"
        state = [e["key"] for e in manifest["graphs"]["decoder_init"]["outputs"]]
        if entry["kind"] == "whole_prefix":
            assert state == ["prefix", "context"]
        else:  # one state per RNN state (h; h and c for an LSTM), h2 ... for a second RNN
            assert state[0] == "h" and ("h2" in state) == ("stacked" in entry["options"]), (name, state)


def test_a_keras3_h5_with_masking_loads_as_keras3_wrote_it(notebooks):
    """Keras 3 itself cannot load the .h5 it writes for a masked model (its NotEqual operation)."""
    import keras

    path = notebooks / zoo(notebooks)["merge_lstm_k3h5"]["decoder"]
    with pytest.raises(Exception, match="NotEqual"):
        keras.models.load_model(path, compile=False)
    from export.keras_files import load_keras_model

    model = load_keras_model(path)
    assert any(type(op).__name__ == "NotEqual" for op in model.operations)


def test_a_keras2_concatenate_over_masks_loads_in_a_process_that_made_no_other_model(notebooks):
    # Its mask was once joined by an operation Keras auto-names "concatenate", the layer's own name in a
    # fresh process: the import then failed unless an earlier model in the process had taken the name.
    path = notebooks / zoo(notebooks)["stacked_rnn_par_h5"]["decoder"]
    code = ("from pathlib import Path; from export.keras_files import load_keras_model; "
            f"load_keras_model(Path({str(path)!r}))")
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **QUIET_TF})
    assert result.returncode == 0, result.stderr[-2000:]


def test_keras2_files_compute_what_tf_keras_computed(notebooks):
    """tf.keras masked the padding for an RNN given an initial state, and through a Concatenate
    with an unmasked input; Keras 3 would not, so the loader restores Keras 2's masking."""
    import tf_keras

    from export.keras_files import load_keras_model

    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 32)).astype(np.float32)
    words = np.zeros((4, 12), np.float32)
    for row, length in enumerate((1, 3, 6, 12)):
        words[row, 12 - length:] = rng.integers(1, 20, size=length)
    for name, entry in zoo(notebooks).items():
        if entry["framework"] == "tf_keras":
            path = notebooks / entry["decoder"]
            want = tf_keras.models.load_model(path, compile=False).predict([features, words], verbose=0)
            got = np.asarray(load_keras_model(path)([features, words], training=False))
            assert np.abs(got - want).max() < 1e-5, name


def run_import(*args: str):
    return run_cli("export.from_keras", *args, check=False)


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_a_malicious_vocabulary_pickle_runs_nothing(notebooks, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "tokenizer.pkl"
    evil.write_bytes(pickle.dumps({"word_index": Payload()}))
    args = import_args(notebooks, "merge_gru_concat", tmp_path / "out")
    args[args.index("--vocabulary") + 1] = str(evil)
    result = run_import(*args)
    assert result.returncode == 2
    assert "refused without running it" in last_line(result)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_refusal_is_one_line_with_nothing_from_tensorflow(notebooks, tmp_path):
    """As a user runs it: no TF_CPP_MIN_LOG_LEVEL set, TensorFlow's C++ and absl free to log."""
    args = import_args(notebooks, "merge_gru_concat", tmp_path / "out")
    args[args.index("--vocabulary") + 1] = str(tmp_path / "missing-words.json")
    (tmp_path / "missing-words.json").write_text('["", "cat", "dog"]')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    result = subprocess.run([PYTHON, "-m", "export.from_keras", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "none of the known start/end word pairs" in result.stderr


def with_decoder(notebooks: Path, decoder: Path, out: Path) -> list[str]:
    args = import_args(notebooks, "merge_gru_concat", out)
    args[args.index("--decoder") + 1] = str(decoder)
    return args


def test_models_the_tool_cannot_read_are_refused_in_one_line(notebooks, tmp_path):
    import keras
    from keras import layers

    features, words, extra = keras.Input((32,)), keras.Input((12,)), keras.Input((4,))
    text = layers.LSTM(8)(layers.Embedding(43, 8, mask_zero=True)(words))
    merged = layers.concatenate([layers.Dense(8)(features), text, extra])
    keras.Model([features, words, extra], layers.Dense(43, activation="softmax")(merged)).save(tmp_path / "three.keras")
    result = run_import(*with_decoder(notebooks, tmp_path / "three.keras", tmp_path / "out"))
    assert result.returncode == 2 and "the model has 3 inputs and 1 outputs" in last_line(result)

    @keras.saving.register_keras_serializable(package="notebook")
    class Scale(layers.Layer):  # its code lives in the notebook, not in the file
        def call(self, x):
            return 2.0 * x

    merged = layers.add([Scale()(layers.Dense(8)(features)), text])
    keras.Model([features, words], layers.Dense(43, activation="softmax")(merged)).save(tmp_path / "custom.keras")
    result = run_import(*with_decoder(notebooks, tmp_path / "custom.keras", tmp_path / "out"))
    assert result.returncode == 2 and "uses custom layer(s) Scale, whose code is not in the file" in last_line(result)
    assert not (tmp_path / "out").exists()


def test_encoder_names_as_people_type_them(tmp_path):
    from export.keras_encoders import encoder_name

    assert {encoder_name(n) for n in ("InceptionV3", "inception_v3", "inceptionv3", "Inception-V3")} == {"inception_v3"}
    assert encoder_name("MobileNetV2") == encoder_name("mobilenet_v2") == "mobilenet_v2"
    common = ["--decoder", "x.h5", "--vocabulary", "v.pkl", "--out", str(tmp_path / "o")]
    result = run_import(*common, "--encoder", "InceptionV3")
    assert result.returncode == 2 and "--encoder needs --encoder-weights" in last_line(result)
    result = run_import(*common, "--encoder", "AlexNet")
    assert result.returncode == 2 and "unknown encoder 'AlexNet'" in last_line(result)


def test_a_lambda_layer_runs_only_with_unsafe_lambda(notebooks, tmp_path):
    import keras
    from keras import layers

    keras.utils.set_random_seed(5)
    features, words = keras.Input((32,)), keras.Input((12,))
    text = layers.LSTM(8)(layers.Embedding(43, 8, mask_zero=True)(words))
    merged = layers.Lambda(lambda pair: pair[0] + pair[1])([layers.Dense(8)(features), text])
    head = layers.Dense(43, activation="softmax")
    model = keras.Model([features, words], head(merged))
    # Untrained, its next-word probabilities are nearly even: sharpen them, or a near-tie that the
    # two runtimes break differently (|diff| ~3e-8, seen once in CI) fails the parity check.
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 30, bias])
    model.save(tmp_path / "lambda.keras")
    args = with_decoder(notebooks, tmp_path / "lambda.keras", tmp_path / "out")
    refused = run_import(*args)
    assert refused.returncode == 2 and "Keras cannot load it" in last_line(refused)
    assert not (tmp_path / "out").exists()
    loaded = run_import(*args, "--unsafe-lambda", "--parity-images", "4")  # a file the user trusts
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "bundle.json").read_text())
    assert manifest["provenance"]["imported"]["architecture"] == "merge"


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
