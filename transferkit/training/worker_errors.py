"""Errors raised inside DataLoader worker processes, re-raised as the error itself.

PyTorch re-raises a worker's exception in the main process with the worker's whole traceback as its
message ("Caught OSError in DataLoader worker process 0. Original Traceback ..."), so the sentence that
says what went wrong comes last, after some 3,000 characters. `plain_worker_errors` turns such an error
back into one of the same type whose message is the original one (the file it names, what to do); the
wrapped error stays attached as its cause, with the worker's traceback.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["original_message", "plain_worker_errors"]

F = TypeVar("F", bound=Callable[..., Any])

_WRAPPED = re.compile(r"Caught (\w+) in (?:DataLoader worker process \d+|pin memory thread[^\n]*)\.\n")
_TRACEBACK_LINE = re.compile(r"^(?:Traceback \(most recent call last\):|\s)")


def original_message(err: BaseException) -> str | None:
    """The message of the exception a DataLoader worker raised, from torch's re-raised ``err``; None when
    ``err`` is not such a re-raise.

    Examples:
        >>> wrapped = OSError(
        ...     "Caught OSError in DataLoader worker process 0.\\nOriginal Traceback (most recent call "
        ...     'last):\\n  File "folders.py", line 9, in load\\n    raise OSError(...)\\n'
        ...     "OSError: cannot read image a.jpg"
        ... )
        >>> original_message(wrapped)
        'cannot read image a.jpg'
    """
    text = err.args[0] if len(err.args) == 1 and isinstance(err.args[0], str) else str(err)
    match = _WRAPPED.match(text)
    if match is None or "\nOriginal Traceback" not in text:
        return None
    lines = text.split("\nOriginal ", 1)[1].splitlines()
    # The last exception in the traceback: the lines after its last indented (code) line.
    start = max((i for i, line in enumerate(lines) if _TRACEBACK_LINE.match(line)), default=-1) + 1
    message = "\n".join(lines[start:]).strip()
    name, sep, rest = message.partition(": ")
    return rest if sep and name.rsplit(".", 1)[-1] == match.group(1) else message


def plain_worker_errors(function: F) -> F:
    """Decorate a function that iterates DataLoaders: a worker's exception, re-raised by PyTorch with the
    worker's traceback as its message, is raised again as the same type with the original message.

    Examples:
        >>> @plain_worker_errors
        ... def fit():
        ...     raise OSError(
        ...         "Caught OSError in DataLoader worker process 0.\\nOriginal Traceback (most recent call "
        ...         "last):\\n  File 'x.py', line 1\\nOSError: cannot read image file a.jpg"
        ...     )
        >>> fit()
        Traceback (most recent call last):
        OSError: cannot read image file a.jpg
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as err:
            message = original_message(err)
            if message is None:
                raise
            try:
                plain = type(err)(message)
            except Exception:  # a type that cannot be built from one message: keep torch's
                raise err from None
            raise plain from err

    return wrapper  # type: ignore[return-value]
