"""Where batch captioning finds its images: folders, glob patterns and list files, on the local
disk or on any filesystem pyarrow reaches (`s3://`, `gs://`, `hdfs://`, `file://`).

Local paths are reported as the user wrote them (expanded); remote ones as full URIs. pyarrow is
imported only for URIs, so the plain `caption` command does not need it.
"""
from __future__ import annotations

import fnmatch
import functools
import glob
import re
from pathlib import Path

COMMENT = re.compile(r"(?:^|\s)#")  # a list file's comment: a '#' at the start of a line or after a space
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


class UsageError(Exception):
    """Arguments the command cannot work with; reported as one line with exit status 2."""


def is_uri(location: str) -> bool:
    return "://" in str(location)


def filesystem_of(location: str):
    """(pyarrow filesystem, path on it) for a URI or a local path."""
    from pyarrow import fs

    if not is_uri(location):
        return fs.LocalFileSystem(), str(Path(location).resolve())
    try:
        return fs.FileSystem.from_uri(str(location).rstrip("/"))
    except Exception as exc:  # pyarrow raises ValueError, OSError or ArrowInvalid, varying by scheme
        raise UsageError(f"{location}: {exc}") from None


@functools.lru_cache(maxsize=1024)
def _folder_filesystem(folder_uri: str):
    # Building a filesystem can cost a round trip (an S3 region lookup): once per folder, not per image.
    return filesystem_of(folder_uri)


def read_bytes(location: str) -> bytes:
    """A file's bytes, from the local disk or through pyarrow; failures are OSErrors."""
    if not is_uri(location):
        return Path(location).read_bytes()
    folder, _, name = str(location).rpartition("/")
    try:
        fs, folder_path = _folder_filesystem(folder)
    except UsageError as exc:
        raise OSError(str(exc)) from None
    try:
        with fs.open_input_stream(f"{folder_path.rstrip('/')}/{name}") as f:
            return f.read()
    except OSError:
        raise
    except Exception as exc:  # pyarrow's own errors (ArrowInvalid is a ValueError): still a file that failed
        raise OSError(str(exc)) from None


def _uri_prefix(uri: str, path: str) -> str:
    """The part of a URI before the filesystem path, to turn listed paths back into URIs."""
    uri = uri.rstrip("/")
    if not uri.endswith(path.rstrip("/")):
        raise UsageError(f"{uri}: cannot map its listing back to URIs (query strings are not supported)")
    return uri[:len(uri) - len(path.rstrip("/"))]


def _find_remote(raw: str) -> list[str]:
    """Image URIs under a remote folder, a remote file, or matching a remote glob pattern."""
    from pyarrow import fs as pafs

    pattern = None
    if glob.has_magic(raw):
        static = raw[:min(raw.index(c) for c in "*?[" if c in raw)].rpartition("/")[0]
        pattern, raw = raw, static
    filesystem, path = filesystem_of(raw)
    prefix = _uri_prefix(raw, path)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise UsageError(f"{raw}: no such file, folder or matching files")
    if info.type == pafs.FileType.File and pattern is None:
        return [raw]
    listed = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    uris = [prefix + item.path for item in listed if item.type == pafs.FileType.File]
    if pattern is not None:
        return [u for u in uris if fnmatch.fnmatchcase(u, pattern)]
    return [u for u in uris if Path(u).suffix.lower() in IMAGE_SUFFIXES]


def find_images(paths: list[str]) -> list[str]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of image files.

    A file named explicitly is kept whatever its suffix (it is tried, and its row says why if it
    fails); folders are searched recursively for image suffixes.
    """
    found: set[str] = set()
    for raw in map(str, paths):
        if is_uri(raw):
            matches = _find_remote(raw)
            if not matches:
                raise UsageError(f"{raw}: no such file, folder or matching files")
            found.update(matches)
            continue
        matches = [Path(p) for p in glob.glob(raw, recursive=True)] if glob.has_magic(raw) else [Path(raw)]
        if not matches or not all(m.exists() for m in matches):
            raise UsageError(f"{raw}: no such file, folder or matching files")
        for match in matches:
            if match.is_dir():
                found.update(str(p) for p in match.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            else:
                found.add(str(match))
    return sorted(found)


def read_list_file(location: str) -> list[str]:
    """Image paths or URIs from a list file, one per line; blank lines and comments (from a `#` that
    starts the line or follows a space) are skipped, so `photo#2.jpg` stays a path.

    Entries are taken as they are, unchecked: one that cannot be read becomes an error row.
    """
    try:
        text = read_bytes(location).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{location}: cannot read the list file ({exc})") from None
    entries = (COMMENT.split(line, maxsplit=1)[0].strip() for line in text.splitlines())
    return [entry for entry in entries if entry]
