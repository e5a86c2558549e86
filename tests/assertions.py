"""Assertion helpers shared by the test modules (import as ``from assertions import ...``)."""
from __future__ import annotations

from typing import Any, Callable

import pytest


def raises_one_line(exc_type: type[BaseException], match: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> str:
    """Call ``fn``; assert it raises ``exc_type`` with a ONE-line message containing ``match``; return it."""
    with pytest.raises(exc_type) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    return msg
