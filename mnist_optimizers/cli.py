"""The stage runner: logging, signals and exit codes, the same for every stage.

A PipelineError becomes one clear line and exit status 1; Ctrl-C and SIGTERM stop a stage
at once, writing nothing, with status 130 or 143.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from mnist_optimizers.errors import PipelineError

log = logging.getLogger(__name__)


def setup_logging() -> None:
    """Log INFO and above to stderr in one compact format."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )


class Terminated(BaseException):
    """SIGTERM arrived (`kill`, a closing terminal, `dvc queue kill`): unwinds the stage like
    Ctrl-C's KeyboardInterrupt, so that no output is written and the MLflow run is ended."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Run a stage's ``main``; a PipelineError becomes one clear line and exit status 1.
    SIGINT (Ctrl-C) and SIGTERM stop it at once, writing nothing, with status 130 or 143."""
    setup_logging()
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(sys.argv[1:])
    except PipelineError as exc:
        log.error("%s", exc)
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("interrupted (SIGINT): no output written; `dvc repro` runs the stage again")
        sys.exit(128 + signal.SIGINT)
    except Terminated:
        log.error("terminated (SIGTERM): no output written; `dvc repro` runs the stage again")
        sys.exit(128 + signal.SIGTERM)
