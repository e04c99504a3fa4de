"""An fp16 variant of a bundle, for GPU serving.

Usage: python -m export.fp16 --bundle onnx_models/demo --run runs/demo --out onnx_models/demo-fp16

The encoder (where nearly all the arithmetic is) is converted to float16 with
onnxconverter-common; its input and output stay float32, so the server loads the variant like
any bundle. The decoder graphs stay float32: they cost well under a millisecond, and the
converter breaks the decoder step (it gives a boolean Less node a float16 output). The variant
is checked against its source bundle on the providers this machine has (CUDA when present);
see export.variant.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from . import variant
from .variant import VariantError

__all__ = ["VariantError", "convert_encoder", "make_variant", "main"]


def convert_encoder(source: Path, target: Path) -> int:
    """Write the float16 encoder; returns how many weights were clamped into float16's range."""
    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return sum("will be truncated" in str(w.message) for w in caught)


def _convert(source: Path, target: Path, context: variant.Context) -> dict:
    clamped = convert_encoder(source, target)  # looked up at call time, so tests can replace it
    context.log(f"{clamped} weights clamped into float16's range")
    return {"clamped_weights": clamped}


FP16 = variant.Precision(name="float16", short="fp16", purpose="float16 encoder for GPU serving, float32 decoder.",
                         tool="onnxconverter-common", convert=_convert)


def make_variant(source: Path, run_dir: Path, out: Path, name: str, images: int, max_quality_loss: float,
                 providers: list[str], log=print) -> dict:
    """Convert, check and write the fp16 variant of `source`; returns its manifest."""
    return variant.make_variant(FP16, source, run_dir, out, name, images, max_quality_loss, providers, log=log)


def default_providers() -> list[str]:
    """CUDA when this onnxruntime has it (the variant's real target), else the CPU."""
    import onnxruntime as ort

    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]


def main(argv: list[str] | None = None) -> int:
    return variant.main(FP16, argv, "Write the fp16 variant of a model bundle (for GPUs).",
                        "onnx_models/demo-fp16", default_providers)


if __name__ == "__main__":
    sys.exit(main())
