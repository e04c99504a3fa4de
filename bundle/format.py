"""The bundle on disk: bundle.json (format, version, required keys), checksums, the vocabulary,
and the staged write that never leaves a half-written bundle behind.

A bundle of the previous format (caption-bundle/1, whose tensors had no keys) is read as the
current one; any other format gets a one-line error that says what to do.
"""
from __future__ import annotations

import hashlib
import math
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .decoding import words_of
from .preprocess import preprocessing_problems
from .specs import ATTENTION, GRAPH_ROLES

FORMAT_NAME = "caption-bundle"
VERSION = 2
FORMAT = f"{FORMAT_NAME}/{VERSION}"
REQUIRED = ("name", "graphs", "vocabulary", "special_tokens", "max_length", "preprocessing", "checksums")
SPECIAL_TOKENS = ("pad", "start", "end", "unknown")
# A reduced-precision path (an fp16 or int8 variant, the OpenVINO bf16 encoder) ships when its
# held-out quality (every object right on synthetic scenes, CIDEr-D on real data) is within this
# of float32's; the variant tools refuse below it and the server warns. Caption identity with
# float32 is reported beside it. The bf16 figures sit in provenance.parity under the key below
# (written by export.openvino_check).
MAX_QUALITY_LOSS = 0.01
OPENVINO_BF16_PARITY = "openvino_bf16_quality"
# Alternative encoders a float32 bundle carries beside its own (export.int8 --attach), by precision:
# {"file": ... or None when refused, "precision", "tool", "quality": {runtime: figures with "passed"}}.
ENCODER_VARIANTS = "encoder_variants"
# The held-out quality figures /api/v1/model shows from the manifest's provenance.metrics.
QUALITY_METRICS = ("bleu", "coco_bleu", "rouge_l", "cider_d", "meteor", "objects_right")  # not "*_vs_fp32": that names a variant bundle


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete, corrupt or of another format."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A loaded bundle: its folder, manifest and vocabulary."""

    path: Path
    manifest: dict
    words: list[str]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def preprocessing(self) -> dict:
        return self.manifest["preprocessing"]

    @property
    def special_tokens(self) -> dict[str, int]:
        return {key: int(value) for key, value in self.manifest["special_tokens"].items()}

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def no_repeat_ngram_size(self) -> int:
        """Decoding never repeats an n-gram of this size within a caption (0: no rule)."""
        return int(self.manifest.get("decoding", {}).get("no_repeat_ngram_size", 0))

    @property
    def attention_grid(self) -> tuple[int, int] | None:
        """(rows, columns) of the map the decoder attends over, row-major, when its step graph
        outputs its attention weights; None otherwise (a pooled or imported decoder)."""
        outputs = {e["key"]: e for e in self.manifest["graphs"]["decoder_step"]["outputs"]}
        if ATTENTION not in outputs:
            return None
        positions = int(outputs[ATTENTION]["shape"][-1])
        side = math.isqrt(positions)  # InceptionV3's maps are square: 8x8 at 299x299
        return (side, side) if side * side == positions else (1, positions)

    def graph_file(self, role: str, optimized: bool = True) -> Path:
        graph = self.manifest["graphs"][role]
        return self.path / (graph["optimized_file"] if optimized and graph.get("optimized_file") else graph["file"])

    def encoder_variant(self, precision: str) -> dict | None:
        """The record of an alternative encoder in this precision (see ENCODER_VARIANTS), or None."""
        return self.manifest.get(ENCODER_VARIANTS, {}).get(precision)

    def encoder_file(self, precision: str = "float32", optimized: bool = True) -> Path:
        """The encoder graph in `precision`: the bundle's own (float32), or an attached alternative."""
        if precision == "float32":
            return self.graph_file("encoder", optimized)
        record = self.encoder_variant(precision)
        if not record or not record.get("file"):
            raise BundleError(f"{self.path}: no {precision} encoder attached"
                              + (" (it failed its quality gate)" if record else " (python -m export.int8 --attach)"))
        return self.path / record["file"]

    def words_of(self, tokens: list[int]) -> list[str]:
        """The caption's words: special tokens (<start>, <end>, padding, <unk>) are not words."""
        return words_of(tokens, self.words, self.special_tokens.values())

    def variant_check(self) -> dict | None:
        """For a reduced-precision variant, how its captions compared with its float32 source's."""
        parity = self.manifest.get("provenance", {}).get("parity", {})
        return next((figures for key, figures in parity.items() if key.endswith("_vs_fp32")), None)

    def summary(self) -> dict:
        """What the API tells clients about the model."""
        m = self.manifest
        provenance = m.get("provenance", {})
        return {
            "name": m["name"],
            "created": m.get("created"),
            "description": m.get("description", ""),
            "vocabulary_size": len(self.words),
            "max_length": m["max_length"],
            "input_size": m["preprocessing"]["resize"],
            "encoder": provenance.get("encoder", {}),
            "encoder_weights_random": provenance.get("encoder_weights_random"),
            "dataset": provenance.get("dataset", {}).get("kind"),
            "metrics": {k: v for k, v in provenance.get("metrics", {}).items()
                        if k.startswith(QUALITY_METRICS)},
            "attention_grid": list(grid) if (grid := self.attention_grid) else None,
            "opset": m.get("opset"),
            "precision": m.get("precision", {role: "float32" for role in GRAPH_ROLES}),
            **({"quality_vs_float32": {k: check.get(k) for k in ("metric", "float32", "variant", "passed",
                                                                  "greedy_captions_identical")}}
               if (check := self.variant_check()) else {}),
        }


def _upgrade(manifest: dict, where: Path) -> dict:
    """The manifest in the current format; BundleError for a format this code cannot read."""
    found = manifest.get("format")
    if found == FORMAT:
        return manifest
    if found == f"{FORMAT_NAME}/1":
        # Version 1 named every tensor by its key; its manifest lacked only the keys.
        for graph in manifest.get("graphs", {}).values():
            for entry in graph.get("inputs", []) + graph.get("outputs", []):
                entry.setdefault("key", entry.get("name"))
        return {**manifest, "format": FORMAT}
    if isinstance(found, str) and found.startswith(FORMAT_NAME + "/"):
        raise BundleError(f"{where}: format {found!r} is newer than this code reads ({FORMAT!r}); "
                          "upgrade the server, or re-export the model with this version's `python -m export`")
    raise BundleError(f"{where}: format {found!r} is not a caption bundle ({FORMAT!r}); "
                      "export one with `python -m export --run RUN --out DIR`")


def read_manifest(path: Path) -> dict:
    """bundle.json of the bundle at `path`, checked for its format and required keys."""
    manifest_path = Path(path) / "bundle.json"
    if not manifest_path.is_file():
        raise BundleError(f"no model bundle at {path} (bundle.json missing); build one with 'make demo'")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: not a JSON object")
    manifest = _upgrade(manifest, manifest_path)
    missing = [k for k in REQUIRED if k not in manifest]
    missing += [f"graphs.{g}" for g in GRAPH_ROLES if g not in manifest.get("graphs", {})]
    missing += [f"special_tokens.{t}" for t in SPECIAL_TOKENS if t not in manifest.get("special_tokens", {})]
    if missing:
        raise BundleError(f"{manifest_path}: missing {', '.join(missing)}")
    if problems := preprocessing_problems(manifest["preprocessing"]):
        raise BundleError(f"{manifest_path}: preprocessing {'; '.join(problems)}")
    size = manifest.get("decoding", {}).get("no_repeat_ngram_size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BundleError(f"{manifest_path}: decoding.no_repeat_ngram_size {size!r} is not an integer >= 0")
    return manifest


def load_bundle(path: Path, verify_checksums: bool = True) -> Bundle:
    """Read and check a bundle folder; raises BundleError with a one-line reason."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, expected in manifest["checksums"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: {name} listed in bundle.json is missing")
        if verify_checksums and "sha256:" + sha256(file) != expected:
            raise BundleError(f"{path}: {name} does not match its checksum (corrupt or replaced)")
    try:
        words = json.loads((path / manifest["vocabulary"]["file"]).read_text())["words"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable vocabulary ({exc})") from None
    if len(words) != manifest["vocabulary"]["size"]:
        raise BundleError(f"{path}: vocabulary has {len(words)} words, bundle.json says {manifest['vocabulary']['size']}")
    return Bundle(path, manifest, words)


def load_bundles(paths: list[Path], verify_checksums: bool = True) -> dict[str, Bundle]:
    """Load several bundles, keyed by their manifest names (which must differ), in the given order."""
    bundles: dict[str, Bundle] = {}
    for path in paths:
        bundle = load_bundle(path, verify_checksums)
        if bundle.name in bundles:
            raise BundleError(f"two bundles are named {bundle.name!r} ({bundles[bundle.name].path} and {path}); "
                              "serve each model under its own name")
        bundles[bundle.name] = bundle
    return bundles


@contextmanager
def staged_bundle(out: Path):
    """A scratch folder beside `out` to build a bundle in. On success `out` is replaced by it (call
    `finish` inside the block first); on any error it is removed and `out` is left as it was."""
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if not (staging / "bundle.json").is_file():
            raise BundleError(f"{staging}: bundle.json was never written")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def finish(staging: Path, manifest: dict) -> dict:
    """Checksum every file of the staged bundle into the manifest and write bundle.json; returns it."""
    manifest = {**manifest, "format": FORMAT,
                "checksums": {p.name: "sha256:" + sha256(p) for p in sorted(Path(staging).iterdir())
                              if p.is_file() and p.name != "bundle.json"}}
    (Path(staging) / "bundle.json").write_text(json.dumps(manifest, indent=2))
    return manifest
