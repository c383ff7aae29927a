"""Reading recorded data sets (CSV files, or folders of them) with errors that say which.

The replay provider and the routing outcome tables read the same kinds of files; `what`
names the data in errors ("replay data", "outcome data").
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from areion.errors import ConfigError

__all__ = ["csv_files", "csv_header", "csv_rows"]


def csv_files(path: Path, what: str) -> list[Path]:
    """`path` itself if it is a file, else the .csv files of the folder, sorted."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
        if not files:
            raise ConfigError(f"{what} folder {path} holds no .csv files")
        return files
    if path.is_file():
        return [path]
    raise ConfigError(f"{what} {path} does not exist (expected a CSV file or folder)")


def csv_header(path: Path, what: str) -> list[str]:
    """The column names of a CSV file (its first row)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"cannot read {what} {path}: {error}") from None


def csv_rows(path: Path, what: str) -> Iterator[dict[str, str]]:
    """The rows of a CSV file as dicts by column name."""
    # Recorded answers (whole programs) exceed csv's default 128 KiB field cap.
    csv.field_size_limit(sys.maxsize)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"cannot read {what} {path}: {error}") from None
