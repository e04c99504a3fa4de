"""An int8 variant of a bundle, for CPU serving.

Usage: python -m export.int8 --bundle onnx_models/demo --run runs/demo --out onnx_models/demo-int8

The encoder is quantised statically with onnxruntime's quantisation tools: QDQ format, int8
weights per output channel, uint8 activations whose ranges (MinMax) come from held-out
images that the caption check does not use. The decoder graphs stay float32. See
export.variant for the check that refuses a variant whose captions drift from float32's.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from bundle.preprocess import load_image
from bundle.sessions import tensor_names

from . import variant
from .variant import VariantError

__all__ = ["VariantError", "quantize_encoder", "make_variant", "main"]

CALIBRATION_BATCH = 8


def quantize_encoder(source: Path, target: Path, images: list[np.ndarray], input_name: str) -> None:
    """Write the statically quantised encoder, calibrated on `images` (each one image's input,
    fed as the graph's input `input_name`)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: np.stack(images[i:i + CALIBRATION_BATCH])}
                                 for i in range(0, len(images), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        # Shapes inferred and graph folded first, as onnxruntime recommends; the graph's shapes
        # are static apart from the batch axis, so onnx's own inference is enough.
        prepared = Path(scratch) / "encoder.pre.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


def _convert(source: Path, target: Path, context: variant.Context) -> dict:
    preprocessing = context.manifest["preprocessing"]
    images = [load_image(Path(h["image"]), preprocessing) for h in context.calibration]
    context.log(f"calibrating on {len(images)} held-out images")
    quantize_encoder(source, target, images, tensor_names(context.manifest["graphs"]["encoder"], "inputs")["image"])
    return {"calibration_images": len(images), "format": "QDQ, per-channel int8 weights, uint8 activations, MinMax"}


INT8 = variant.Precision(name="int8", short="int8", purpose="int8 encoder (static QDQ) for CPU serving, float32 decoder.",
                         tool="onnxruntime", convert=_convert)


def make_variant(source: Path, run_dir: Path, out: Path, name: str, images: int, max_quality_loss: float,
                 calibration_images: int = 100, log=print) -> dict:
    """Quantise, check and write the int8 variant of `source`; returns its manifest."""
    return variant.make_variant(INT8, source, run_dir, out, name, images, max_quality_loss, ["CPUExecutionProvider"],
                                calibration_images, log=log)


def main(argv: list[str] | None = None) -> int:
    return variant.main(INT8, argv, "Write the int8 variant of a model bundle (for CPUs).", "onnx_models/demo-int8",
                        lambda: ["CPUExecutionProvider"], calibration_default=100)


if __name__ == "__main__":
    sys.exit(main())
