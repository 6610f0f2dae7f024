"""Stage `download@<workload>`: fetch the four IDX files of the workload's data set (its
entry of `datasets` in params.yaml) into data/raw/<workload>/, verified by SHA-256.

Sources are tried in order: `$<DATASET>_MIRROR` first when set (MNIST_MIRROR,
FASHION_MNIST_MIRROR: a local folder or a base URL), then the data set's `mirrors`. A file
is accepted only when the SHA-256 of the file as served or of its decompressed content is
the data set's, and is written atomically, so data/raw/ never holds an unverified or
half-written file.

    MNIST_MIRROR=../shared/data/mnist dvc repro download@mnist_cnn
"""

from __future__ import annotations

import hashlib
import logging
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

from mnist_optimizers import workloads
from mnist_optimizers.cli import dvc_stage_item, run_stage
from mnist_optimizers.errors import ParamsError, PipelineError
from mnist_optimizers.files import write_atomic
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import raw_dir
from mnist_optimizers.sections.download import (Dataset, DownloadConfig, validate_datasets,
                                                validate_download)
CHUNK = 1 << 16
# MNIST's largest file is 9.9 MB, Fashion-MNIST's 26 MB, each 47 MB unpacked: a source that
# sends more, or a file that unpacks to more, is no such data set.
MAX_BYTES = 64 << 20
MAX_UNPACKED = 64 << 20

log = logging.getLogger(__name__)


class DownloadError(PipelineError):
    """No source served a file whose checksum matched."""


class SourceError(Exception):
    """One source failed for one file; the next source is tried."""


def is_url(source: str) -> bool:
    """True for http(s) and file URLs, False for a local folder path."""
    return source.startswith(("http://", "https://", "file://"))


def resolve_sources(mirrors: tuple[str, ...], env_mirror: str | None, root: Path) -> list[str]:
    """Return the sources to try in order: `env_mirror` (a relative folder resolved
    against ``root``), then the params mirrors."""
    sources = list(mirrors)
    if env_mirror:
        if not is_url(env_mirror):
            env_mirror = str((root / env_mirror).resolve())
        sources.insert(0, env_mirror)
    return sources


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


def fetch_verified(
    name: str, expected: str, sources: list[str], timeout: float, deadline: float = 600.0
) -> bytes:
    """Return the bytes of ``name`` from the first source whose file, or its decompressed
    content, has SHA-256 ``expected``; DownloadError listing every source and its failure
    otherwise."""
    failures = []
    for source in sources:
        try:
            data = read_source(source, name, timeout, deadline)
            content = hashlib.sha256(gunzip(data)).hexdigest()  # a valid gzip file, always
            if expected not in (content, hashlib.sha256(data).hexdigest()):
                raise SourceError(
                    f"checksum mismatch: expected SHA-256 {expected}, got {content} (content)"
                )
        except SourceError as exc:
            log.warning("%s from %s rejected: %s", name, source, exc)
            failures.append(f"  - {source}: {exc}")
            continue
        log.info("%s: verified from %s", name, source)
        return data
    tried = "\n".join(failures) or "  (no sources: set the mirror variable or the mirrors)"
    raise DownloadError(f"{name}: no source served a verified copy. Tried:\n{tried}")


def download_all(
    config: DownloadConfig, dataset: Dataset, sources: list[str], out_dir: Path
) -> None:
    """Fetch and verify every file of ``dataset`` first, then write each atomically into
    ``out_dir``: when any file fails, nothing is written."""
    verified = {
        name: fetch_verified(
            name, expected, sources, config.timeout_seconds, config.deadline_seconds
        )
        for name, expected in dataset.sha256.items()
    }
    for name, data in verified.items():
        write_atomic(out_dir / name, lambda handle, data=data: handle.write(data), binary=True)


def main(argv: list[str]) -> None:
    usage = "usage: python -m stages.download <workload from params.yaml>"
    if len(argv) > 1:
        raise ParamsError(usage)
    name = argv[0] if argv else dvc_stage_item("download", usage)
    params = load_params()
    config = validate_download(params["download"])
    dataset = validate_datasets(params["datasets"])[workloads.workload(params, name).data]
    root = Path(os.environ.get("DVC_ROOT", "."))
    sources = resolve_sources(dataset.mirrors, os.environ.get(dataset.mirror_env), root)
    download_all(config, dataset, sources, raw_dir(name))


if __name__ == "__main__":
    run_stage(main)
