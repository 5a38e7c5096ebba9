"""Errors of the `ane` backend, and the mapping from Objective-C failures to them.

Every call into AppleNeuralEngine.framework can fail three ways: it raises an Objective-C exception
(PyObjC turns it into a Python exception carrying `_pyobjc_info_ = {name, reason, userInfo}`), it
returns NO/nil and fills an `NSError**`, or it returns NO/nil and says nothing (ane-private-api.md
§1.3, §6: compile failures can be silent). All three become an `ANEError` that names the step of
the §1.2 sequence, so a user knows whether the compiler, the loader or the evaluation refused.

Pure Python: the NSError side is duck-typed (`domain()`, `code()`, `localizedDescription()`,
`userInfo()`), so the mapping is tested off macOS with stand-in objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from ...errors import AnekitError

#: The steps of ane-private-api.md §1.2 (plus the surrounding set-up), as named in errors.
STEPS = (
    "framework",  # §1.1: dlopen the framework, resolve the classes
    "descriptor",  # §1.2 step 1
    "model",  # §1.2 steps 2-4 (in-memory model, hex id, temp dir)
    "compile",  # §1.2 step 5
    "load",  # §1.2 step 6
    "surface",  # §1.5 IOSurface creation, lock, unlock
    "request",  # §1.6
    "eval",  # §1.2 step 8
    "unload",  # §1.2 step 9
)
#: Longest compiler message kept in an error (the compiler can print whole programs).
MAX_DETAIL = 4000

T = TypeVar("T")


class ANEError(AnekitError, RuntimeError):
    """A step of the engine call sequence failed.

    step: one of `STEPS`. message: what failed, including the compiler's or driver's own text.
    domain, code: the NSError's, when there was one. name: the Objective-C exception name, when
    there was one. details: the NSError's userInfo or the exception's, as plain strings.
    """

    def __init__(
        self,
        step: str,
        message: str,
        *,
        domain: str | None = None,
        code: int | None = None,
        name: str | None = None,
        details: Mapping[str, str] | None = None,
    ):
        if step not in STEPS:
            raise ValueError(f"unknown ANE step {step!r}")
        self.step = step
        self.message = message
        self.domain = domain
        self.code = code
        self.name = name
        self.details = dict(details or {})
        super().__init__(self._format())

    def __reduce__(self):
        # Picklable, so an error raised in a worker process reaches the caller as itself.
        return (_rebuild, (self.step, self.message, self.domain, self.code, self.name, self.details))

    def _format(self) -> str:
        where = []
        if self.name:
            where.append(self.name)
        if self.domain is not None:
            where.append(f"{self.domain} code {self.code}")
        suffix = f" [{', '.join(where)}]" if where else ""
        return f"ANE {self.step} failed: {self.message}{suffix}"


def _rebuild(step, message, domain, code, name, details) -> ANEError:
    return ANEError(step, message, domain=domain, code=code, name=name, details=details)


def _text(value: Any) -> str:
    """A short str of an Objective-C value (NSString, NSNumber, nested NSError...)."""
    if value is None:
        return ""
    if hasattr(value, "localizedDescription") and hasattr(value, "domain"):
        return _nserror_summary(value)
    text = str(value)
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "... (truncated)"


def _nserror_summary(error: Any) -> str:
    try:
        return f"{error.localizedDescription()} ({error.domain()} code {int(error.code())})"
    except Exception:  # a malformed error object must not hide the original failure
        return repr(error)


def _plain_info(info: Any) -> dict[str, str]:
    if info is None:
        return {}
    try:
        items = list(info.items())
    except Exception:
        return {"userInfo": _text(info)}
    return {str(k): _text(v) for k, v in items}


def from_nserror(step: str, what: str, error: Any) -> ANEError:
    """An `ANEError` for `what` (e.g. "compileWithQoS:options:error:") that returned NO with `error`.

    The message is the error's localized description plus every userInfo entry that is not just a
    repeat of it: the compiler puts its diagnostics there (and in nested underlying errors).
    """
    if error is None:
        return ANEError(step, f"{what} returned NO/nil without an NSError (a silent failure, §6)")
    try:
        description = str(error.localizedDescription())
    except Exception:
        description = repr(error)
    try:
        domain = str(error.domain())
    except Exception:
        domain = None
    try:
        code = int(error.code())
    except Exception:
        code = None
    try:
        details = _plain_info(error.userInfo())
    except Exception:
        details = {}
    extra = [f"{k}: {v}" for k, v in details.items() if v and v != description]
    message = f"{what} returned NO: {description}"
    if extra:
        message += "; " + "; ".join(extra)
    return ANEError(step, message, domain=domain, code=code, details=details)


def from_exception(step: str, what: str, exc: BaseException) -> ANEError:
    """An `ANEError` for an exception raised while calling `what`.

    PyObjC attaches the Objective-C exception's name, reason and userInfo as `_pyobjc_info_`; any
    other exception (a Python error in argument conversion, say) is reported by its type and text.
    """
    info = getattr(exc, "_pyobjc_info_", None)
    if isinstance(info, Mapping):
        name = _text(info.get("name")) or type(exc).__name__
        reason = _text(info.get("reason")) or str(exc)
        return ANEError(
            step, f"{what} raised {name}: {reason}", name=name, details=_plain_info(info.get("userInfo"))
        )
    return ANEError(step, f"{what} raised {type(exc).__name__}: {exc}", name=type(exc).__name__)


def check_bool(step: str, what: str, result: Any) -> None:
    """Raise unless a `BOOL`-returning call with an `NSError**` out-argument succeeded.

    PyObjC returns such calls as `(ok, error)` (the out-argument becomes a second result).
    """
    if isinstance(result, tuple):
        ok, error = (result + (None,))[:2]
    else:
        ok, error = result, None
    if not bool(ok):
        raise from_nserror(step, what, error)


def check_object(step: str, what: str, result: T | None) -> T:
    """Raise if a call that returns an object returned nil (None)."""
    if result is None:
        raise ANEError(step, f"{what} returned nil")
    return result


@contextmanager
def objc_step(step: str, what: str) -> Iterator[None]:
    """Turn any exception raised in the block (other than an `ANEError`) into an `ANEError`."""
    try:
        yield
    except ANEError:
        raise
    except Exception as exc:  # Objective-C exceptions arrive as ordinary Python exceptions
        raise from_exception(step, what, exc) from exc


def call(step: str, what: str, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` with Objective-C exceptions mapped to `ANEError(step)`."""
    with objc_step(step, what):
        return fn(*args)
