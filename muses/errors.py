"""User-facing errors.

Every error a user can cause (bad input, missing files, bad configs) is a :class:`MusesError` whose message names
the problem and the fix. The CLI prints these without a traceback; programming errors keep their traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class MusesError(Exception):
    """An error caused by user input, with a message that says what is wrong and how to fix it."""


class InputError(MusesError, ValueError):
    """A text, document or argument passed to the library is not usable (empty, wrong type, bad dim...)."""


class DataError(MusesError):
    """A dataset is missing or a data file is malformed. The message names the file and, where known, the line."""


class ModelError(MusesError):
    """A model name or path cannot be loaded, or a saved model folder is incomplete."""


class ConfigError(MusesError, ValueError):
    """A configuration file or value is invalid."""


class UnknownIdError(MusesError, KeyError):
    """A document id is not in the store."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def validation_problems(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic's ``ValidationError.errors()`` as one line: ``field.path: message; ...``. A part of the path that is
    empty or holds whitespace is quoted, and line breaks in messages become spaces."""
    parts = []
    for err in errors:
        where = ".".join(_field(x) for x in err.get("loc", ())) or "settings"
        parts.append(f"{where}: {' '.join(str(err.get('msg', '')).split())}")
    return "; ".join(parts)


def _field(part: object) -> str:
    """One part of a setting's name in an error: as written, or quoted when it is empty or holds whitespace."""
    text = str(part)
    return text if text and not any(c.isspace() for c in text) else repr(text)
