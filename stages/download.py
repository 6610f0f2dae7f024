"""Stage `download`: fetch the four MNIST IDX files into data/raw/, verified by SHA-256.

Sources are tried in order: `$MNIST_MIRROR` first when set (a local folder or a base URL),
then `download.mirrors` from params.yaml. A file is accepted only when the SHA-256 of its
decompressed content matches `download.sha256`, and is written atomically, so data/raw/
never holds an unverified or half-written file.

    MNIST_MIRROR=../shared/data/mnist dvc repro download
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mnist_optimizers.cli import run_stage
from mnist_optimizers.errors import ParamsError, PipelineError
from mnist_optimizers.files import write_atomic
from mnist_optimizers.params import check_keys, finite_number, load_params
from mnist_optimizers.paths import MNIST_FILES, RAW_DIR

MIRROR_ENV = "MNIST_MIRROR"
CHUNK = 1 << 16

log = logging.getLogger(__name__)


class DownloadError(PipelineError):
    """No source served a file whose checksum matched."""


class SourceError(Exception):
    """One source failed for one file; the next source is tried."""


@dataclass(frozen=True)
class DownloadConfig:
    mirrors: tuple[str, ...]
    sha256: dict[str, str]  # file name -> SHA-256 of its decompressed content
    timeout_seconds: float


def validate_download(section: Any) -> DownloadConfig:
    """Check the `download` section: mirror URLs, one SHA-256 per MNIST file, a timeout."""
    check_keys(section, ("mirrors", "sha256", "timeout_seconds"), "download", ("sha256",))
    mirrors = section.get("mirrors") or []
    if not isinstance(mirrors, list) or not all(isinstance(m, str) and m for m in mirrors):
        raise ParamsError(f"download.mirrors: expected a list of base URLs, got {mirrors!r}")
    sha256 = section["sha256"]
    check_keys(sha256, MNIST_FILES, "download.sha256", MNIST_FILES)
    for name, digest in sha256.items():
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ParamsError(
                f"download.sha256.{name}: expected 64 lowercase hex digits, got {digest!r}"
            )
    timeout = finite_number(section.get("timeout_seconds", 30), "download.timeout_seconds")
    if timeout <= 0:
        raise ParamsError(f"download.timeout_seconds: expected > 0, got {timeout!r}")
    return DownloadConfig(tuple(mirrors), dict(sha256), timeout)


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


def read_source(source: str, name: str, timeout: float) -> bytes:
    """Return the bytes of ``name`` from a folder or a base URL, with a progress bar for URLs."""
    if not is_url(source):
        path = Path(source) / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    url = source.rstrip("/") + "/" + name
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            chunks = []
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar:
                while chunk := response.read(CHUNK):
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise SourceError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SourceError(f"cannot fetch {url}: {reason}") from None
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise SourceError(f"truncated download of {url}: {len(data)} of {total} bytes")
    return data


def decompressed_sha256(data: bytes) -> str:
    """SHA-256 of the gunzipped ``data``; SourceError if it is not a complete gzip stream."""
    try:
        return hashlib.sha256(gzip.decompress(data)).hexdigest()
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"not a valid gzip file ({exc})") from None


def fetch_verified(name: str, expected: str, sources: list[str], timeout: float) -> bytes:
    """Return the bytes of ``name`` from the first source whose content has SHA-256
    ``expected``; DownloadError listing every source and its failure otherwise."""
    failures = []
    for source in sources:
        try:
            data = read_source(source, name, timeout)
            actual = decompressed_sha256(data)
            if actual != expected:
                raise SourceError(f"checksum mismatch: expected SHA-256 {expected}, got {actual}")
        except SourceError as exc:
            log.warning("%s from %s rejected: %s", name, source, exc)
            failures.append(f"  - {source}: {exc}")
            continue
        log.info("%s: verified from %s", name, source)
        return data
    tried = "\n".join(failures) or "  (no sources: set MNIST_MIRROR or download.mirrors)"
    raise DownloadError(f"{name}: no source served a verified copy. Tried:\n{tried}")


def download_all(config: DownloadConfig, sources: list[str], out_dir: Path) -> None:
    """Fetch and verify every file first, then write each atomically into ``out_dir``:
    when any file fails, nothing is written."""
    verified = {
        name: fetch_verified(name, expected, sources, config.timeout_seconds)
        for name, expected in config.sha256.items()
    }
    for name, data in verified.items():
        write_atomic(out_dir / name, lambda handle, data=data: handle.write(data), binary=True)


def main(argv: list[str]) -> None:
    config = validate_download(load_params()["download"])
    root = Path(os.environ.get("DVC_ROOT", "."))
    sources = resolve_sources(config.mirrors, os.environ.get(MIRROR_ENV), root)
    download_all(config, sources, RAW_DIR)


if __name__ == "__main__":
    run_stage(main)
