"""An int8 encoder for CPU serving, quantised with accuracy control.

Usage: python -m export.int8 --bundle onnx_models/demo --run runs/demo --attach
       python -m export.int8 --bundle onnx_models/demo --run runs/demo --out onnx_models/demo-int8

NNCF's `quantize_with_accuracy_control` quantises the encoder (QDQ: int8 weights per output
channel, activations per tensor) on held-out images that the caption check does not use, judges
the result on the same images by the held-out quality metric, and keeps the convolutions that
cost the most quality in float32 until the loss is within --max-quality-loss. The decoder graphs
stay float32. export.variant then judges the result on other held-out images and refuses it when
it loses more than that: `--attach` records the encoder in the float32 bundle itself (the server
may then choose it: server/path_choice.py), `--out` writes a bundle of its own.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from bundle.preprocess import load_image
from bundle.sessions import SessionEncoder

from . import variant
from .heldout_quality import quality
from .parity import greedy_ids
from .variant import VariantError

__all__ = ["VariantError", "quantize_encoder", "make_variant", "attach", "main"]


def quantize_encoder(source: Path, target: Path, images: list[np.ndarray], judge, max_drop: float, log=print) -> dict:
    """Write the int8 encoder of `source`, calibrated on `images` (one image's input each), with
    accuracy control: `judge(encode) -> (quality, features per image)` scores an encoder
    (`encode(batch) -> features`) on those images; layers are kept in float32 until the quality
    is within `max_drop` of float32's. Returns what the manifest records."""
    import onnx
    import onnxruntime as ort

    from server.openvino_encoder import import_openvino

    try:
        import_openvino()  # NNCF imports openvino where it is installed: without its telemetry
    except ImportError:
        pass
    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-step INFO lines: the export logs its own
    model = onnx.load(str(source))
    input_name = model.graph.input[0].name

    def validate(candidate, indices):
        session = ort.InferenceSession(candidate.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = lambda batch: session.run(None, {input_name: batch})[0]  # noqa: E731
        value, features = judge(feed, [int(i) for i in indices])
        return value, [[f] for f in features]

    calibration = nncf.Dataset(list(range(len(images))), lambda i: {input_name: images[i][None]})
    quantized = nncf.quantize_with_accuracy_control(
        model, calibration, calibration, validate, max_drop=max_drop, subset_size=len(images),
        target_device=nncf.TargetDevice.CPU)
    onnx.save(quantized, str(target))
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    kept = sum(1 for n in quantized.graph.node if n.op_type == "Conv" and n.input[1] not in dequantized)
    log(f"quantised with accuracy control on {len(images)} held-out images; {kept} convolutions kept in float32")
    return {"calibration_images": len(images), "convolutions_in_float32": kept,
            "format": "QDQ, per-channel int8 weights, int8 activations; NNCF accuracy control"}


def _convert(source: Path, target: Path, context: variant.Context) -> dict:
    manifest = context.manifest
    preprocessing, graphs = manifest["preprocessing"], manifest["graphs"]
    entries = context.calibration
    images = [load_image(Path(h["image"]), preprocessing) for h in entries]
    context.log(f"calibrating on {len(images)} held-out images")
    decoder = context.decoder_sessions
    special = manifest["special_tokens"]

    def judge(encode, indices):
        features = np.concatenate([encode(np.stack([images[i] for i in indices[first:first + 16]]))
                                   for first in range(0, len(indices), 16)])
        ids = greedy_ids(decoder, graphs, features, special, int(manifest["max_length"]),
                         context.no_repeat_ngram_size)
        captions = [context.words_of(tokens) for tokens in ids]
        return quality(captions, [entries[i] for i in indices], context.scenes)[1], list(features)

    return quantize_encoder(source, target, images, judge, context.max_quality_loss, context.log)


INT8 = variant.Precision(name="int8", short="int8", tool="nncf", convert=_convert,
                         purpose="int8 encoder (QDQ, NNCF accuracy control) for CPU serving, float32 decoder.")


def make_variant(source: Path, run_dir: Path, out: Path, name: str, images: int, max_quality_loss: float,
                 calibration_images: int = 100, log=print) -> dict:
    """Quantise, check and write the int8 variant of `source` as a bundle of its own; returns its manifest."""
    return variant.make_variant(INT8, source, run_dir, out, name, images, max_quality_loss, ["CPUExecutionProvider"],
                                calibration_images, log=log)


def attach(source: Path, run_dir: Path, images: int, max_quality_loss: float, calibration_images: int = 100,
           log=print) -> dict:
    """Quantise and check the int8 encoder of `source` and record it in that bundle (its figures
    even when refused, so that the server can say why it does not choose it); judged on
    onnxruntime, and on OpenVINO too where it is installed. Returns the record."""
    from server.openvino_encoder import OpenVINOUnavailable, openvino_capabilities

    from .openvino_check import check_int8

    record = variant.attach_variant(INT8, source, run_dir, images, max_quality_loss, ["CPUExecutionProvider"],
                                    calibration_images, log=log)
    try:
        openvino_capabilities()
    except OpenVINOUnavailable as exc:
        log(f"not judged on OpenVINO: {exc}")
        return record
    record["quality"]["openvino"] = check_int8(source, run_dir, images, max_quality_loss, log=log)
    return record


def main(argv: list[str] | None = None) -> int:
    return variant.main(INT8, argv, "Quantise a model bundle's encoder to int8 (for CPUs).", "onnx_models/demo-int8",
                        lambda: ["CPUExecutionProvider"], calibration_default=100, attach=attach)


if __name__ == "__main__":
    sys.exit(main())
