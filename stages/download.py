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
from pathlib import Path

from mnist_optimizers import workloads
from mnist_optimizers.cli import run_stage, stage_args
from mnist_optimizers.errors import PipelineError
from mnist_optimizers.fetch import SourceError, gunzip, is_url, read_source
from mnist_optimizers.files import write_atomic
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import raw_dir
from mnist_optimizers.sections.download import (Dataset, DownloadConfig, validate_datasets,
                                                validate_download)

log = logging.getLogger(__name__)


class DownloadError(PipelineError):
    """No source served a file whose checksum matched."""


def resolve_sources(mirrors: tuple[str, ...], env_mirror: str | None, root: Path) -> list[str]:
    """Return the sources to try in order: `env_mirror` (a relative folder resolved
    against ``root``), then the params mirrors."""
    sources = list(mirrors)
    if env_mirror:
        if not is_url(env_mirror):
            env_mirror = str((root / env_mirror).resolve())
        sources.insert(0, env_mirror)
    return sources


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
    params = load_params()
    (name,) = stage_args("download", argv, ("workload",), params)
    config = validate_download(params["download"])
    dataset = validate_datasets(params["datasets"])[workloads.workload(params, name).data]
    root = Path(os.environ.get("DVC_ROOT", "."))
    sources = resolve_sources(dataset.mirrors, os.environ.get(dataset.mirror_env), root)
    download_all(config, dataset, sources, raw_dir(name))


if __name__ == "__main__":
    run_stage(main)
