"""Caption many images from the command line with the server's engine: `caption PATH...`.

PATHs are files, folders (searched recursively) or glob patterns. One row per image goes to
--out (JSON lines, or CSV when the file ends in .csv; standard output by default); a file that
cannot be captioned gets a row with its reason instead of a caption. With --out, a second run
skips the images already in the file, so a large folder can be captioned in several goes.
Exit status: 0 when every image was captioned, 1 when some were skipped, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
CSV_FIELDS = ("path", "caption", "log_prob", "error")


class UsageError(Exception):
    """Arguments the command cannot work with; reported as one line with exit status 2."""


def find_images(paths: list[str]) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of image files."""
    found: set[Path] = set()
    for raw in paths:
        matches = [Path(p) for p in glob.glob(raw, recursive=True)] if glob.has_magic(raw) else [Path(raw)]
        if not matches or not all(m.exists() for m in matches):
            raise UsageError(f"{raw}: no such file, folder or matching files")
        for match in matches:
            if match.is_dir():
                found.update(p for p in match.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            else:
                found.add(match)  # named explicitly: try it whatever its suffix, and say why if it fails
    return sorted(found)


def drop_partial_last_line(out: Path) -> None:
    """Cut off the half-written row an interrupted run may have left, so the file stays well-formed."""
    with open(out, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def already_done(out: Path | None, fmt: str) -> set[str]:
    """Paths with a row in an earlier run's output file."""
    if out is None or not out.exists():
        return set()
    drop_partial_last_line(out)
    try:
        with open(out, newline="") as f:
            if fmt == "csv":
                return {row["path"] for row in csv.DictReader(f)}
            return {json.loads(line)["path"] for line in f if line.strip()}
    except (ValueError, KeyError, TypeError, csv.Error):
        raise UsageError(f"{out} exists and is not {fmt} output of this command; choose another --out") from None


class RowWriter:
    """Appends result rows as JSON lines or CSV, flushed per batch so an interruption loses little."""

    def __init__(self, out: Path | None, fmt: str):
        self.fmt = fmt
        new = out is None or not out.exists() or out.stat().st_size == 0
        self.file = open(out, "a", newline="") if out is not None else sys.stdout
        self.csv = csv.DictWriter(self.file, CSV_FIELDS) if fmt == "csv" else None
        if self.csv and new:
            self.csv.writeheader()

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if self.csv:
                self.csv.writerow({k: row.get(k, "") for k in CSV_FIELDS})
            else:
                self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not sys.stdout:
            self.file.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caption", description="Caption image files with a model bundle.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    parser.add_argument("--bundle", type=Path, help="model bundle folder (default: CAPTION_BUNDLE or onnx_models/demo)")
    parser.add_argument("--out", type=Path, help="output file; resumed when it exists (default: standard output)")
    parser.add_argument("--format", choices=("jsonl", "csv"), help="default: csv for a .csv --out, else jsonl")
    parser.add_argument("--batch-size", type=int, default=8, help="images per encoder run (default 8)")
    parser.add_argument("--beam-size", type=int, help="1 = greedy (default: CAPTION_DEFAULT_BEAM_SIZE or 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"caption: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("caption: interrupted; run the same command again to go on", file=sys.stderr)
        return 130


def run(args) -> int:
    from bundle.format import BundleError, load_bundle

    from .config import Config, ConfigError
    from .providers import ProviderError

    fmt = args.format or ("csv" if args.out is not None and args.out.suffix.lower() == ".csv" else "jsonl")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    paths = find_images(args.paths)
    if not paths:
        raise UsageError("no image files found in " + ", ".join(args.paths))
    try:
        config = Config.from_env()
        if args.bundle is not None:
            config.bundle = args.bundle
        beam_size = config.default_beam_size if args.beam_size is None else args.beam_size
        if not 1 <= beam_size <= config.max_beam_size:
            raise UsageError(f"--beam-size must be between 1 and {config.max_beam_size}")
        done = already_done(args.out, fmt)
        todo = [p for p in paths if str(p) not in done]
        from .captioning import caption_files
        from .engine import CaptionEngine

        engine = CaptionEngine(load_bundle(config.bundle, config.verify_checksums), config.engine_options())
    except (BundleError, ConfigError, ProviderError, OSError) as exc:
        raise UsageError(str(exc)) from None

    if done:
        print(f"caption: {len(paths) - len(todo)} of {len(paths)} images already in {args.out}; "
              f"captioning the other {len(todo)}", file=sys.stderr)
    writer = RowWriter(args.out, fmt)
    skipped = captioned = 0
    started = time.perf_counter()
    try:
        with tqdm(total=len(todo), unit="img", desc="captioning", disable=args.quiet, file=sys.stderr) as bar:
            for rows in caption_files(engine, todo, config.max_pixels, beam_size, config.length_penalty,
                                      args.batch_size):
                writer.write(rows)
                for row in rows:
                    if "error" in row:
                        skipped += 1
                        bar.write(f"caption: skipped {row['path']}: {row['error']}", file=sys.stderr)
                captioned += sum("error" not in row for row in rows)
                bar.update(len(rows))
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    print(f"caption: {captioned} captioned, {skipped} skipped in {seconds:.1f} s", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
