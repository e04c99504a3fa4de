"""Reading a model bundle: bundle.json, its checksums and its vocabulary."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_FORMAT = "caption-bundle/1"
GRAPHS = ("encoder", "decoder_init", "decoder_step")


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete, corrupt or of another format."""


@dataclass
class Bundle:
    """A loaded bundle: its folder, manifest and vocabulary."""

    path: Path
    manifest: dict
    words: list[str]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    def graph_file(self, role: str, optimized: bool = True) -> Path:
        graph = self.manifest["graphs"][role]
        return self.path / (graph["optimized_file"] if optimized and graph.get("optimized_file") else graph["file"])

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
                        if k.startswith(("bleu", "objects_right"))},
            "opset": m.get("opset"),
            "precision": m.get("precision", {role: "float32" for role in GRAPHS}),
            **({"agreement_with_float32": check["agreement"]} if (check := self.variant_check()) else {}),
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: Path, verify_checksums: bool = True) -> Bundle:
    """Read and check a bundle folder; raises BundleError with a one-line reason."""
    path = Path(path)
    manifest_path = path / "bundle.json"
    if not manifest_path.is_file():
        raise BundleError(f"no model bundle at {path} (bundle.json missing); build one with 'make demo'")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
    if manifest.get("format") != SUPPORTED_FORMAT:
        raise BundleError(f"{manifest_path}: format {manifest.get('format')!r}, expected {SUPPORTED_FORMAT!r}")
    missing = [k for k in ("name", "graphs", "vocabulary", "special_tokens", "max_length", "preprocessing", "checksums")
               if k not in manifest]
    missing += [f"graphs.{g}" for g in GRAPHS if g not in manifest.get("graphs", {})]
    if missing:
        raise BundleError(f"{manifest_path}: missing {', '.join(missing)}")
    for name, expected in manifest["checksums"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: {name} listed in bundle.json is missing")
        if verify_checksums and "sha256:" + _sha256(file) != expected:
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
