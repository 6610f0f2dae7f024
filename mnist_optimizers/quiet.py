"""Keras on the backend params.yaml names (`train.backend`, mnist_optimizers.backend), loaded
without its start-up noise: a stage that trains or loads a model imports this module before
anything that imports Keras, so that its output is what a person reads (what it does, one
line per epoch, the result) and a warning means that something is wrong. On JAX, TensorFlow
is not loaded at all (JAX's CPU backend starts without a line; where it prints one, it shows).

What silences what, with TensorFlow 2.21 and Keras 3.15 (tests/test_train.py counts the
lines of a training stage that are not the pipeline's own):

- `TF_CPP_MIN_LOG_LEVEL=3`, read when TensorFlow's C++ runtime starts: its log once started,
  the CPU-feature notice and the E-level "NodeDef mentions attribute use_unbounded_threadpool"
  line that tf.data prints at every fit (a harmless mismatch inside TensorFlow). Set it to 0
  in the environment to see all of it again.
- The lines written while TensorFlow's libraries load, before absl's log is initialised
  (oneDNN's "custom operations are on", absl's "All log messages before
  absl::InitializeLog() is called are written to STDERR"), ignore that variable
  (tensorflow/tensorflow#100442) and go straight to file descriptor 2. TensorFlow is
  therefore imported here with descriptor 2 pointed at a temporary file; every captured
  line but those is then written to stderr, so nothing else is lost.
- Keras imports scikit-learn (for `keras.wrappers`) and matplotlib.pyplot (for
  `keras.visualization`) at start-up when they are installed, as MLflow has them installed:
  about a second of every stage's start, for features the pipeline does not use. They are
  hidden while Keras loads (Keras then leaves those features off), and load as usual for
  whatever imports them afterwards (the report's figures).
- Keras' progress bars show only on a terminal: `fit` is verbose only there
  (mnist_optimizers/fit.py; the stage logs one line per epoch anyway), and what the `predict`
  that MLflow runs on a logged model's input example prints is dropped off a terminal
  (mlflow_logs.log_model).
- JAX logs at INFO that it found no TPU: its logger is kept at WARNING (cli.setup_logging).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

from mnist_optimizers import backend

# INFO lines of TensorFlow's C++ log ("I0000 00:00:... port.cc:153] ...") and the notice
# absl prints before its first line.
START_UP_NOISE = re.compile(
    r"^(I\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] |"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called)"
)


def filter_start_up_log(text: str) -> str:
    """``text`` without TensorFlow's start-up INFO lines and absl's notice."""
    return "".join(
        line for line in text.splitlines(keepends=True) if not START_UP_NOISE.match(line)
    )


# What Keras imports when installed, for features the pipeline does not use.
UNUSED_BY_KERAS = ("sklearn", "matplotlib")


@contextlib.contextmanager
def hidden(packages: tuple[str, ...]) -> Iterator[None]:
    """Within the block, importing one of ``packages`` (or a module in it) raises ImportError,
    as if it were not installed; afterwards it imports as usual. One already imported stays."""
    hide = [name for name in packages if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not found"
    try:
        yield
    finally:
        for name in hide:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def import_keras_quietly() -> None:
    """Set the backend from params.yaml, import Keras (and TensorFlow, when it is the backend)
    with descriptor 2 captured, then write what was captured, less the start-up noise, to
    stderr (also when the import fails)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    backend.select()
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            with hidden(UNUSED_BY_KERAS):
                import keras
            if keras.backend.backend() == "tensorflow":
                import tensorflow  # noqa: F401
            else:
                # JAX warns at every fork of a process it runs in. What forks in a stage is
                # subprocess (for the libraries' helper commands), whose child execs at once
                # and takes none of JAX's threads' locks.
                warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(filter_start_up_log(captured.read().decode(errors="replace")))
            sys.stderr.flush()


import_keras_quietly()
