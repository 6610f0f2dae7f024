"""Stage `download`: sources in order, checksum verification, atomic writes, clear failures."""

from __future__ import annotations

import functools
import hashlib
import gzip
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mnist_optimizers import fetch
from mnist_optimizers.paths import MNIST_FILES, raw_dir
from stages import download
from mnist_optimizers.sections.download import Dataset, DownloadConfig

from .conftest import WORKLOAD, TRAIN_LABELS, tiny_mnist_contents, write_mirror


def serve(handler: Any) -> Iterator[str]:
    """Serve ``handler`` over HTTP on 127.0.0.1 on a free port; yield its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_mirror(tiny_mirror) -> Iterator[str]:
    """The tiny mirror served over HTTP on 127.0.0.1 on a free port."""
    folder, _ = tiny_mirror
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    yield from serve(handler)


def config(
    sha256: dict[str, str], timeout: float = 5, deadline: float = 600
) -> tuple[DownloadConfig, Dataset]:
    """The download settings and a data set with ``sha256``: download_all's first two
    arguments."""
    return (DownloadConfig(timeout_seconds=timeout, deadline_seconds=deadline),
            Dataset("mnist", (), sha256))  # fmt: skip


def test_env_mirror_comes_first_and_relative_folders_resolve_against_the_root(
    tmp_path: Path,
) -> None:
    sources = download.resolve_sources(("https://a.example/",), "../mnist", tmp_path / "repo")
    assert sources == [str((tmp_path / "mnist").resolve()), "https://a.example/"]
    assert download.resolve_sources(("https://a/",), None, tmp_path) == ["https://a/"]
    assert download.resolve_sources((), "http://b/", tmp_path) == ["http://b/"]


def test_main_copies_verified_files_from_the_env_mirror(project: Path, tiny_mirror) -> None:
    folder, _ = tiny_mirror
    download.main([WORKLOAD])
    assert sorted(p.name for p in raw_dir(WORKLOAD).iterdir()) == sorted(MNIST_FILES)
    for name in MNIST_FILES:
        assert (raw_dir(WORKLOAD) / name).read_bytes() == (folder / name).read_bytes()


def test_downloads_over_http(tmp_path: Path, tiny_mirror, http_mirror: str) -> None:
    _, sha256 = tiny_mirror
    download.download_all(*config(sha256), [http_mirror], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(MNIST_FILES)


def test_a_corrupt_source_is_rejected_and_the_next_one_used(
    tmp_path: Path, tiny_mirror, caplog: pytest.LogCaptureFixture
) -> None:
    good, sha256 = tiny_mirror
    wrong = tmp_path / "wrong"
    write_mirror(wrong, tiny_mnist_contents(seed=1))  # valid IDX files, other content
    out = tmp_path / "raw"
    download.download_all(*config(sha256), [str(wrong), str(good)], out)
    assert (out / TRAIN_LABELS).read_bytes() == (good / TRAIN_LABELS).read_bytes()
    assert (
        f"{TRAIN_LABELS} from {wrong} rejected: checksum mismatch: expected SHA-256 {sha256[TRAIN_LABELS]}"
        in caplog.text
    )


def test_when_every_source_fails_nothing_is_written_and_each_reason_is_listed(
    tmp_path: Path, tiny_mirror, http_mirror: str
) -> None:
    good, sha256 = tiny_mirror
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for name in MNIST_FILES:
        (truncated / name).write_bytes((good / name).read_bytes()[:-20])
    html = tmp_path / "html"
    html.mkdir()
    for name in MNIST_FILES:
        (html / name).write_text("<html><body>503 Service Unavailable</body></html>")
    missing = tmp_path / "missing"
    out = tmp_path / "raw"
    sources = [str(truncated), str(html), str(missing), http_mirror + "nothing-here/"]
    with pytest.raises(download.DownloadError) as error:
        download.download_all(*config(sha256), sources, out)
    message = str(error.value)
    first = MNIST_FILES[0]
    assert message.startswith(f"{first}: no source served a verified copy. Tried:")
    assert f"{truncated}: not a valid gzip file" in message
    assert f"{html}: not a valid gzip file" in message
    assert f"{missing}: cannot read {missing / first}" in message
    assert f"cannot fetch {http_mirror}nothing-here/{first}: HTTP 404" in message
    assert not out.exists() or not any(out.iterdir())


def test_no_sources_at_all_says_how_to_add_one(tmp_path: Path, tiny_mirror) -> None:
    _, sha256 = tiny_mirror
    with pytest.raises(download.DownloadError, match="set the mirror variable or the mirrors"):
        download.download_all(*config(sha256), [], tmp_path)


def test_checksum_is_of_the_decompressed_content() -> None:
    content = b"same bytes"
    wrapped_twice = [gzip.compress(content, mtime=0), gzip.compress(content, mtime=12345)]
    assert wrapped_twice[0] != wrapped_twice[1]
    assert download.gunzip(wrapped_twice[0]) == download.gunzip(wrapped_twice[1]) == content
    assert download.gunzip(wrapped_twice[0] + wrapped_twice[1]) == 2 * content  # two members
    with pytest.raises(download.SourceError, match=r"not a valid gzip file \(cut short\)"):
        download.gunzip(wrapped_twice[0][:-4])


def test_a_checksum_of_the_archive_as_published_is_accepted_too(tmp_path: Path, tiny_mirror) -> None:
    """Fashion-MNIST and KMNIST publish the SHA-256 of their .gz files, MNIST's entry gives
    the content's: either verifies a file; neither of another file does."""
    good, content_sums = tiny_mirror
    archive_sums = {name: hashlib.sha256((good / name).read_bytes()).hexdigest()
                    for name in MNIST_FILES}  # fmt: skip
    assert archive_sums != content_sums
    download.download_all(*config(archive_sums), [str(good)], tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(MNIST_FILES)
    other = tmp_path / "other"
    write_mirror(other, tiny_mnist_contents(seed=1))
    with pytest.raises(download.DownloadError, match="checksum mismatch"):
        download.download_all(*config(archive_sums), [str(other)], tmp_path / "raw2")


@pytest.fixture
def hanging_mirror() -> Iterator[str]:
    """A mirror that accepts the connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        listener.close()


def test_a_mirror_that_times_out_is_skipped_for_the_next(
    tmp_path: Path, tiny_mirror, hanging_mirror: str
) -> None:
    good, sha256 = tiny_mirror
    out = tmp_path / "raw"
    started = time.monotonic()
    download.download_all(*config(sha256, timeout=0.5), [hanging_mirror, str(good)], out)
    assert time.monotonic() - started < 4 * 0.5 * len(MNIST_FILES) + 5
    for name in MNIST_FILES:
        assert (out / name).read_bytes() == (good / name).read_bytes()


def test_a_corrupted_byte_is_caught_and_nothing_unverified_is_kept(
    tmp_path: Path, tiny_mirror
) -> None:
    good, sha256 = tiny_mirror
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in MNIST_FILES:
        data = bytearray((good / name).read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte in the compressed stream
        (corrupt / name).write_bytes(bytes(data))
    out = tmp_path / "raw"
    with pytest.raises(download.DownloadError) as error:
        download.download_all(*config(sha256), [str(corrupt)], out)
    assert f"{corrupt}: " in str(error.value)
    assert not out.exists() or not any(out.iterdir())


class DrippingHandler(http.server.BaseHTTPRequestHandler):
    """Answers at once, then sends its body a byte at a time, each well within the read
    timeout: a slow or stuck mirror that a timeout per read never stops. ``body_size`` of
    None sends bytes without end."""

    body_size: int | None = 10_000
    interval = 0.2

    def do_GET(self) -> None:
        self.send_response(200)
        if self.body_size is not None:
            self.send_header("Content-Length", str(self.body_size))
        self.end_headers()
        sent = 0
        try:
            while self.body_size is None or sent < self.body_size:
                self.wfile.write(b"x")
                self.wfile.flush()
                sent += 1
                time.sleep(self.interval)
        except OSError:  # the client gave up
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dripping_mirror() -> Iterator[str]:
    yield from serve(DrippingHandler)


def test_a_mirror_that_drips_is_given_up_at_its_deadline_for_the_next(
    tmp_path: Path, tiny_mirror, dripping_mirror: str, caplog: pytest.LogCaptureFixture
) -> None:
    good, sha256 = tiny_mirror
    started = time.monotonic()
    download.download_all(*config(sha256, timeout=1, deadline=1.5), [dripping_mirror, str(good)], tmp_path / "raw"
    )
    assert time.monotonic() - started < len(MNIST_FILES) * (1.5 + 1) + 5
    assert "not complete after 1.5 s" in caplog.text and "download.deadline_seconds" in caplog.text
    for name in MNIST_FILES:
        assert (tmp_path / "raw" / name).read_bytes() == (good / name).read_bytes()


def test_a_mirror_that_never_stops_sending_is_cut_off(
    monkeypatch: pytest.MonkeyPatch, dripping_mirror: str
) -> None:
    monkeypatch.setattr(DrippingHandler, "body_size", None)
    monkeypatch.setattr(DrippingHandler, "interval", 0)
    monkeypatch.setattr(fetch, "MAX_BYTES", 50_000)
    with pytest.raises(
        download.SourceError, match="sent more than 50,000 bytes, not an MNIST file"
    ):
        download.read_source(dripping_mirror, TRAIN_LABELS, timeout=5, deadline=60)


def bad_file(path: Path, kind: str) -> None:
    if kind == "fifo":  # opened for reading, it waits for a writer that never comes
        os.mkfifo(path)
    elif kind == "link-to-dev-zero":  # endless
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:  # a gzip bomb: 70 KiB that unpack to 70 MiB
        path.write_bytes(gzip.compress(bytes(70 << 20), compresslevel=9, mtime=0))


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("fifo", "not a regular file"), ("link-to-dev-zero", "not a regular file"),
     ("folder", "not a regular file"),
     ("gzip-bomb", "unpacks to more than 67,108,864 bytes, not an MNIST file")],
)  # fmt: skip
def test_a_folder_mirror_whose_files_never_end_is_given_up_at_once_for_the_next(
    tmp_path: Path, tiny_mirror, caplog: pytest.LogCaptureFixture, kind: str, reason: str
) -> None:
    """The folder mirror's files get the URL's bounds: a regular file, at most MAX_BYTES,
    within the deadline, and at most MAX_UNPACKED bytes unpacked."""
    good, sha256 = tiny_mirror
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in MNIST_FILES:
        bad_file(bad / name, kind)
    out = tmp_path / "raw"
    worker = threading.Thread(
        target=download.download_all, args=(*config(sha256), [str(bad), str(good)], out),
        daemon=True,  # a download that hangs must not hang the test run too
    )  # fmt: skip
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), f"the download of a {kind} mirror still runs after 60 s"
    for name in MNIST_FILES:
        assert f"{name} from {bad} rejected: " in caplog.text
        assert (out / name).read_bytes() == (good / name).read_bytes()
    assert reason in caplog.text
