"""The image encoders of the classic captioning notebooks: a keras.applications model, cut where
the notebooks cut it, with the input size and preprocess_input mode that go with it.

Weights come from a local file (`--encoder-weights`); nothing is downloaded. The files are the
ones keras.applications itself downloads, e.g. from https://storage.googleapis.com/tensorflow/keras-applications/
(inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5,
vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5, resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EncoderRecipe:
    """How a notebook builds its encoder from keras.applications."""

    application: str       # the keras.applications function
    image_size: int
    mode: str              # preprocess_input mode: tf, caffe, torch, raw
    include_top: bool      # VGG16's fc2 needs the top; the others are pooled without it
    cut: str | None        # the layer whose output is the feature (None: the pooled output)
    feature_dim: int

    @property
    def description(self) -> str:
        return f"{self.application} {'cut at ' + self.cut if self.cut else 'global-average-pooled'}"


ENCODERS = {
    "inception_v3": EncoderRecipe("InceptionV3", 299, "tf", False, None, 2048),
    "vgg16": EncoderRecipe("VGG16", 224, "caffe", True, "fc2", 4096),
    "resnet50": EncoderRecipe("ResNet50", 224, "caffe", False, None, 2048),
    "xception": EncoderRecipe("Xception", 299, "tf", False, None, 2048),
    "mobilenet_v2": EncoderRecipe("MobileNetV2", 224, "tf", False, None, 1280),
    "efficientnet_b0": EncoderRecipe("EfficientNetB0", 224, "raw", False, None, 1280),
}


def _folded(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def encoder_name(typed: str) -> str:
    """The ENCODERS key for a name as people type it: `InceptionV3`, `inception_v3` and
    `inceptionv3` are one encoder (case, `_` and `-` do not count); ValueError for another name."""
    for key, recipe in ENCODERS.items():
        if _folded(typed) in (_folded(key), _folded(recipe.application)):
            return key
    raise ValueError(f"unknown encoder {typed!r}; one of: "
                     + ", ".join(f"{r.application} ({k})" for k, r in ENCODERS.items()))


def build_encoder(name: str, weights: Path):
    """The notebook's encoder `name` with the weights in the local file `weights`; ValueError if
    they do not fit (skip_mismatch stays off: a file for another architecture must fail)."""
    import keras

    recipe = ENCODERS[name]
    if not Path(weights).is_file():
        raise ValueError(f"--encoder-weights {weights}: no such file")
    application = getattr(keras.applications, recipe.application)
    shape = (recipe.image_size, recipe.image_size, 3)
    with _random_initialisers_off():
        model = application(weights=None, include_top=recipe.include_top, input_shape=shape,
                            pooling=None if recipe.include_top else "avg")
    try:
        model.load_weights(str(weights))
    except (ValueError, KeyError, OSError) as exc:
        raise ValueError(f"--encoder-weights {weights} does not fit {recipe.application} "
                         f"({'with' if recipe.include_top else 'without'} its top): {str(exc).splitlines()[0]}") from None
    if recipe.cut:
        model = keras.Model(model.inputs, model.get_layer(recipe.cut).output, name=f"{name}_{recipe.cut}")
    return model


@contextmanager
def _random_initialisers_off():
    """Inside, Keras' random initialisers give zeros. Every weight is then read from the file, and
    drawing them at random first left 800 MB more resident for VGG16 (1.94 GB built, 1.15 GB so)."""
    import keras

    classes = [c for c in vars(keras.initializers).values()
               if isinstance(c, type) and issubclass(c, keras.initializers.Initializer) and "__call__" in vars(c)]
    saved = {c: vars(c)["__call__"] for c in classes}

    def zeros(self, shape, dtype=None):
        return keras.ops.zeros(shape, dtype=dtype)

    try:
        for c in classes:
            c.__call__ = zeros
        yield
    finally:
        for c, call in saved.items():
            c.__call__ = call
