"""The one exception family of recsys. Messages say what went wrong and what to do."""

from __future__ import annotations


class RecsysError(Exception):
    """Base class: the CLI prints its message on one line and exits 1."""


class DataError(RecsysError):
    """Bad input data. Names the file, the row (1-based line for text files) and the field."""

    def __init__(self, path: object, row: int | None, field: str | None, problem: str) -> None:
        self.path, self.row, self.field, self.problem = str(path), row, field, problem
        where = self.path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class ModelMismatchError(RecsysError):
    """A saved model does not fit the data or features it is asked to score."""
