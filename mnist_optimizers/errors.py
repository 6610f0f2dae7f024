"""The errors a user can cause and fix: each becomes one clear line and exit status 1."""

from __future__ import annotations

import re
import reprlib


class PipelineError(Exception):
    """An error the user can fix: bad params, bad data, an unreachable service."""


class ParamsError(PipelineError):
    """A value in params.yaml is missing, unknown or invalid."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (`kill`, a closing terminal), or the stage's parent went
    away: unwinds the stage like Ctrl-C's KeyboardInterrupt, so that no output is written and
    the MLflow run is ended."""


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxtuple = 8
_SHOWN.maxlevel = 3
_SHOWN.maxlong = 40


def shown(value: object) -> str:
    """``value`` as an error message quotes it: its repr, cut short (a message never quotes
    more than about a hundred characters of what a user typed, whatever its size)."""
    return _SHOWN.repr(value)


# `scheme://user:password@host`: the password; `?token=...`: a secret query value.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")
_SECRET_QUERY = re.compile(
    r"(?P<head>[?&](?:[A-Za-z0-9_.-]*(?:token|key|password|passwd|secret|sig|signature|auth|"
    r"credential)[A-Za-z0-9_.-]*)=)[^&\s#]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (`user:***@`) and every secret-looking
    query value (`?token=***`) masked: what every log line and message goes through."""
    text = _USERINFO.sub(r"\g<head>:***@", text)
    return _SECRET_QUERY.sub(r"\g<head>***", text)
