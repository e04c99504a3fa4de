"""The contract's one preprocessing function: every manifest setting is applied, files load as
the server decodes uploads, and a preprocessing the code cannot apply is refused."""
import io

import numpy as np
import pytest
from PIL import Image

from bundle.preprocess import input_shape, keras_preprocessing, load_image, preprocessing_problems, to_model_input
from server.uploads import decode_image

TF_MODE = {"resize": [299, 299], "resample": "bilinear", "channels": "RGB", "layout": "NHWC",
           "scale": 1 / 127.5, "offset": -1.0}
# Keras' "caffe" mode as VGG16/ResNet50 notebooks use it: BGR, ImageNet means subtracted, no scaling.
CAFFE_MODE = {"resize": [224, 224], "resample": "nearest", "channels": "BGR", "layout": "NHWC",
              "scale": 1.0, "offset": [-103.939, -116.779, -123.68]}


def test_tf_mode_scales_pixels_to_minus_one_one():
    array = to_model_input(Image.new("RGB", (640, 480), (255, 0, 127)), TF_MODE)
    assert array.shape == (299, 299, 3) and array.dtype == np.float32
    np.testing.assert_allclose(array[0, 0], [1.0, -1.0, 127 / 127.5 - 1], atol=1e-6)


def test_caffe_mode_orders_channels_and_subtracts_means():
    array = to_model_input(Image.new("RGB", (50, 40), (10, 20, 30)), CAFFE_MODE)
    assert array.shape == (224, 224, 3)
    np.testing.assert_allclose(array[5, 5], [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-4)


def test_channels_first_layout():
    nchw = {**TF_MODE, "layout": "NCHW", "resize": [64, 32]}
    array = to_model_input(Image.new("RGB", (10, 10), (255, 0, 0)), nchw)
    assert array.shape == input_shape(nchw) == (3, 32, 64)
    assert array[0].min() == 1.0 and array[1].max() == -1.0


def test_resample_filter_is_the_manifests():
    stripes = Image.fromarray(np.tile(np.array([0, 255] * 50, np.uint8), (100, 1))).convert("RGB")
    nearest = to_model_input(stripes, {**TF_MODE, "resample": "nearest", "resize": [30, 30]})
    bilinear = to_model_input(stripes, {**TF_MODE, "resample": "bilinear", "resize": [30, 30]})
    assert set(np.unique(nearest)) <= {-1.0, 1.0}  # nearest keeps only the source's values
    assert len(np.unique(bilinear)) > 2


def test_a_file_loads_exactly_as_the_server_decodes_its_upload(tmp_path):
    """Training and export parity read files with load_image; the server decodes uploads. Same pixels."""
    rgba = Image.new("RGBA", (2400, 1800), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (600, 400, 1800, 1400))
    photo = Image.effect_noise((2400, 1800), 60).convert("RGB")
    for name, image, fmt in (("alpha.png", rgba, "PNG"), ("photo.jpg", photo, "JPEG")):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        (tmp_path / name).write_bytes(buffer.getvalue())
        served = to_model_input(decode_image(buffer.getvalue(), 10**8, TF_MODE), TF_MODE)
        np.testing.assert_array_equal(load_image(tmp_path / name, TF_MODE), served)
    assert load_image(tmp_path / "alpha.png", TF_MODE)[0, 0].tolist() == [1.0, 1.0, 1.0]  # transparency -> white


@pytest.mark.parametrize("change, problem", [
    ({"resample": "lanczos"}, "resample"),
    ({"channels": "RGBA"}, "channels"),
    ({"layout": "CHW"}, "layout"),
    ({"resize": [299]}, "resize"),
    ({"offset": [1, 2]}, "offset"),
    ({"scale": "1/127.5"}, "scale"),
])
def test_preprocessing_the_code_cannot_apply_is_named(change, problem):
    assert preprocessing_problems(TF_MODE) == [] and preprocessing_problems(CAFFE_MODE) == []
    problems = preprocessing_problems({**TF_MODE, **change})
    assert len(problems) == 1 and problems[0].startswith(problem)


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch"])
def test_keras_modes_equal_keras_preprocess_input(mode):
    """Each mode as a manifest gives what keras.applications.imagenet_utils.preprocess_input gives."""
    from keras.applications.imagenet_utils import preprocess_input

    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    manifest = keras_preprocessing(mode, 8)
    assert preprocessing_problems(manifest) == []
    want = preprocess_input(pixels.astype(np.float32)[None], mode=mode)[0]
    np.testing.assert_allclose(to_model_input(Image.fromarray(pixels), manifest), want, rtol=1e-5, atol=1e-4)
