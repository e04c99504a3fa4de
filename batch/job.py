"""A sharded captioning job on disk: the folder that `caption --ray` fills and resumes.

    OUT/job.json               what the job is (inputs, bundle, decoding, format, shard size)
    OUT/images.parquet         every image path, one row group per shard, fixed at the first run
    OUT/captions-00000.jsonl   shard 0's rows (or .parquet), present only once complete

A shard's file is written under a temporary name and renamed when complete, so a file that
exists is finished and a resumed job redoes only the shards without one. OUT may be a local
folder or any URI pyarrow reaches. Rows are those of the single-machine `caption` command.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

from .image_files import UsageError, filesystem_of, is_uri, read_bytes

JOB_FORMAT = "caption-job/1"
OUTPUT_FORMATS = ("jsonl", "parquet")
ROW_FIELDS = ("path", "caption", "tokens", "log_prob", "error")


def _caption_schema():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("caption", pa.string()), ("tokens", pa.list_(pa.string())),
                      ("log_prob", pa.float64()), ("error", pa.string())])


@dataclass(frozen=True)
class CaptionJob:
    """One job folder. Holds only strings, so it travels to Ray actors as it is."""

    out: str
    settings: dict   # job.json, less the derived counts
    images: int
    shard_size: int
    base: str        # the folder relative image paths are read from (the first run's working folder)

    @property
    def output_format(self) -> str:
        return self.settings["output_format"]

    @property
    def shards(self) -> int:
        return -(-self.images // self.shard_size)

    def _fs(self):
        return filesystem_of(self.out)

    def shard_name(self, shard: int) -> str:
        return f"captions-{shard:05d}.{self.output_format}"

    def pending(self) -> list[int]:
        """Shards without a finished file."""
        from pyarrow import fs as pafs

        filesystem, root = self._fs()
        done = {info.base_name for info in filesystem.get_file_info(pafs.FileSelector(root))
                if info.type == pafs.FileType.File}
        return [k for k in range(self.shards) if self.shard_name(k) not in done]

    def shard_paths(self, shard: int) -> list[str]:
        """The image paths of one shard, as its rows will show them."""
        import pyarrow.parquet as pq

        filesystem, root = self._fs()
        with filesystem.open_input_file(f"{root}/images.parquet") as f:
            return pq.ParquetFile(f).read_row_group(shard, columns=["path"]).column("path").to_pylist()

    def readable(self, path: str) -> str:
        """Where a row's path is read from: relative paths are relative to the first run's folder."""
        return path if is_uri(path) or os.path.isabs(path) else os.path.join(self.base, path)

    def write_shard(self, shard: int, rows: list[dict]) -> None:
        """Write one shard's rows under a temporary name, then rename it into place."""
        filesystem, root = self._fs()
        final = f"{root}/{self.shard_name(shard)}"
        temporary = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
        with filesystem.open_output_stream(temporary) as f:
            if self.output_format == "jsonl":
                f.write("".join(json.dumps(row) + "\n" for row in rows).encode())
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.Table.from_pylist([{k: row.get(k) for k in ROW_FIELDS} for row in rows],
                                             schema=_caption_schema())
                pq.write_table(table, f)
        filesystem.move(temporary, final)

    def read_shard(self, shard: int) -> list[dict]:
        """One finished shard's rows, in the single-machine command's form (absent keys, not nulls)."""
        filesystem, root = self._fs()
        path = f"{root}/{self.shard_name(shard)}"
        if self.output_format == "jsonl":
            return [json.loads(line) for line in _read(filesystem, path).decode().splitlines() if line.strip()]
        import pyarrow.parquet as pq

        with filesystem.open_input_file(path) as f:
            rows = pq.read_table(f).to_pylist()
        return [{k: v for k, v in row.items() if v is not None} for row in rows]

    def read_rows(self) -> list[dict]:
        """Every finished shard's rows, in image order."""
        pending = set(self.pending())
        return [row for k in range(self.shards) if k not in pending for row in self.read_shard(k)]


def open_job(out: str, settings: dict, list_images, choose_shard_size) -> CaptionJob:
    """The job in `out`: created from `list_images()` when new, else checked against `settings`.

    A folder that holds a job with other settings is refused rather than mixed with it.
    """
    from pyarrow import fs as pafs

    filesystem, root = filesystem_of(out)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise UsageError(f"{out} is a file; --out needs a folder for the shards")
    if info.type == pafs.FileType.Directory and filesystem.get_file_info(f"{root}/job.json").type == pafs.FileType.File:
        return _resume(out, filesystem, root, settings)
    if info.type == pafs.FileType.Directory and filesystem.get_file_info(pafs.FileSelector(root)):
        raise UsageError(f"{out} is not empty and holds no caption job; choose another --out")
    images = list_images()
    if not images:
        raise UsageError("no image files found")
    shard_size = settings.get("shard_size") or choose_shard_size(len(images))
    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem.create_dir(root, recursive=True)
    with filesystem.open_output_stream(f"{root}/images.parquet") as f:
        pq.write_table(pa.table({"path": images}), f, row_group_size=shard_size)
    record = {**settings, "shard_size": shard_size, "format": JOB_FORMAT, "images": len(images),
              "base": os.getcwd()}
    # job.json last: a folder without it is a job whose listing was never finished, started again.
    with filesystem.open_output_stream(f"{root}/job.json") as f:
        f.write(json.dumps(record, indent=2).encode())
    return CaptionJob(out, {k: record[k] for k in settings}, len(images), shard_size, record["base"])


def _resume(out: str, filesystem, root: str, settings: dict) -> CaptionJob:
    try:
        record = json.loads(_read(filesystem, f"{root}/job.json"))
        if record.get("format") != JOB_FORMAT:
            raise ValueError(record.get("format"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{out}/job.json is not a caption job of this version ({exc}); choose another --out") from None
    for key, value in settings.items():
        if key == "shard_size" and value is None:
            continue  # not asked for: the job's own
        if record.get(key) != value:
            raise UsageError(f"{out} holds a job with {key} {record.get(key)!r}, not {value!r}; "
                             "run it with its own settings or choose another --out")
    _remove_temporary_files(filesystem, root)
    return CaptionJob(out, {k: record[k] for k in settings}, record["images"], record["shard_size"], record["base"])


def _read(filesystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as f:
        return f.read()


def _remove_temporary_files(filesystem, root: str) -> None:
    """Half-written shards of an interrupted run; their shards are redone."""
    from pyarrow import fs as pafs

    for info in filesystem.get_file_info(pafs.FileSelector(root)):
        if ".tmp-" in info.base_name:
            filesystem.delete_file(info.path)


def bundle_identity(bundle: str) -> str:
    """A bundle's manifest hash, so a resumed job is refused if its model changed."""
    import hashlib

    try:
        return "sha256:" + hashlib.sha256(read_bytes(f"{str(bundle).rstrip('/')}/bundle.json")).hexdigest()
    except OSError as exc:
        raise UsageError(f"{bundle}: no bundle.json there ({exc.strerror or exc})") from None
