"""What every CLI test checks of bad input: exit code 2 and one ``error:`` message naming the problem, no traceback.

Imported by the CLI tests as ``from tests.cli_checks import one_line_error`` (pytest puts the checkout on the path).
"""

from __future__ import annotations

from typer.testing import Result


def one_line_error(result: Result, *words: str) -> None:
    """Exit 2, one ``error:`` message (rich may wrap it) containing each of ``words``, no traceback.

    Model-loading progress lines are ignored; they go to stderr in a terminal.
    """
    lines = [line for line in result.output.splitlines() if "Loading weights" not in line and line.strip()]
    out = " ".join(" ".join(lines).split())
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and out.startswith("error:"), result.output
    assert sum(line.lstrip().startswith("error:") for line in lines) == 1, result.output
    for w in words:
        assert w in out, (w, result.output)
