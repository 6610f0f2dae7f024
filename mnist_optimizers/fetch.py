"""Reading a data file from a mirror, bounded: a local folder or a URL, within a deadline and
a size, and its gzip content within a size too. stages/download.py tries the mirrors in turn
and verifies what they serve.
"""

from __future__ import annotations

import os
import stat
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

CHUNK = 1 << 16
# MNIST's largest file is 9.9 MB, Fashion-MNIST's 26 MB, each 47 MB unpacked: a source that
# sends more, or a file that unpacks to more, is no such data set.
MAX_BYTES = 64 << 20
MAX_UNPACKED = 64 << 20


class SourceError(Exception):
    """One source failed for one file; the next source is tried."""


def is_url(source: str) -> bool:
    """True for http(s) and file URLs, False for a local folder path."""
    return source.startswith(("http://", "https://", "file://"))


def read_bounded(stream: BinaryIO, where: str, ends: float, deadline: float,
                 progress: Callable[[int], object] | None = None) -> bytes:  # fmt: skip
    """All of ``stream``, chunk by chunk (each one's size to ``progress``): SourceError past
    MAX_BYTES or the monotonic time ``ends`` (``deadline`` seconds from the start)."""
    chunks, size = [], 0
    # read1: what has arrived, at most one wait; read(n) waits for all n bytes.
    while chunk := stream.read1(CHUNK):  # type: ignore[attr-defined]
        chunks.append(chunk)
        size += len(chunk)
        if progress is not None:
            progress(len(chunk))
        if size > MAX_BYTES:
            raise SourceError(f"{where}: sent more than {MAX_BYTES:,} bytes, not an MNIST file")
        if time.monotonic() > ends:
            raise SourceError(
                f"{where}: not complete after {deadline:g} s ({size} bytes; "
                "download.deadline_seconds)"
            )
    return b"".join(chunks)


def read_file(path: Path, deadline: float) -> bytes:
    """The bytes of the regular file at ``path`` (a link is followed), within the same
    bounds as a URL. A FIFO, a device (a link to /dev/zero), a folder: SourceError, at once
    (O_NONBLOCK: opening a FIFO does not wait for a writer)."""
    ends = time.monotonic() + deadline
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SourceError(f"cannot read {path}: not a regular file")
    with open(fd, "rb") as handle:
        try:
            return read_bounded(handle, str(path), ends, deadline)
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_source(source: str, name: str, timeout: float, deadline: float = 600.0) -> bytes:
    """Return the bytes of ``name`` from a folder or a base URL, with a progress bar for URLs.
    A URL silent for ``timeout`` seconds, any source slower than ``deadline`` seconds for the
    whole file or sending more than MAX_BYTES fails (SourceError)."""
    if not is_url(source):
        return read_file(Path(source) / name, deadline)
    url = source.rstrip("/") + "/" + name
    ends = time.monotonic() + deadline
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar:
                data = read_bounded(response, url, ends, deadline, bar.update)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SourceError(f"cannot fetch {url}: {reason}") from None
    if total is not None and len(data) != total:
        raise SourceError(f"truncated download of {url}: {len(data)} of {total} bytes")
    return data


def gunzip(data: bytes) -> bytes:
    """The content of the gzip ``data`` (every member), at most MAX_UNPACKED bytes; SourceError
    if it is not a complete gzip stream or unpacks to more (a small file can unpack to
    gigabytes)."""
    parts, size = [], 0
    try:
        while data:
            member = zlib.decompressobj(wbits=31)
            while not member.eof:
                if not data:
                    raise SourceError("not a valid gzip file (cut short)")
                part = member.decompress(data, MAX_UNPACKED + 1 - size)
                data = member.unconsumed_tail
                size += len(part)
                parts.append(part)
                if size > MAX_UNPACKED:
                    raise SourceError(
                        f"unpacks to more than {MAX_UNPACKED:,} bytes, not an MNIST file"
                    )
            data = member.unused_data
    except zlib.error as exc:
        raise SourceError(f"not a valid gzip file ({exc})") from None
    return b"".join(parts)
