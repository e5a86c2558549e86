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


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``medgen.cli.main(argv)`` -> (exit code, stdout, stderr); argparse exits count as exit codes."""
    from medgen.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit 2 and exactly one ``medgen: error:`` line on stderr containing every fragment."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("medgen: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
