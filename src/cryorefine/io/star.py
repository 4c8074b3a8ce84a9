"""STAR files: read every block (loop tables and list blocks), write them back whole.

Parsing is done by ``starfile``; before it, one pass over the raw text checks what
``starfile`` would silently accept: a label given twice in a block (a list block
would keep the last value), a block name given twice (the last block would win),
a loop row with more or fewer values than labels (pandas pads short rows with
NaN), a block with no labels (``starfile`` would take the next block's content).
After it, every label in ``labels.NUMERIC_LABELS`` must hold numbers only.

Names and paths (``labels.TEXT_LABELS``) stay text even when they look numeric.
Row numbers in messages are 1-based data rows of the block.
"""

import linecache
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TypeAlias

import pandas as pd
import starfile

from cryorefine.errors import InputError
from cryorefine.io.atomic import write_atomically
from cryorefine.io.labels import NUMERIC_LABELS, TEXT_LABELS
from cryorefine.io.tables import describe_rows

__all__ = ["FLOAT_DIGITS", "StarBlock", "read_star", "write_star"]

#: A STAR block: a loop table (DataFrame) or a list block (label -> value).
StarBlock: TypeAlias = pd.DataFrame | dict[str, str | int | float]

#: Significant digits of floats written to STAR files (RELION writes 6 decimals).
FLOAT_DIGITS = 12


@dataclass
class _Layout:
    """What the raw text says about one block: its labels and its number of rows."""

    name: str
    line: int
    is_loop: bool = False
    labels: dict[str, int] = field(default_factory=dict)  # label -> line number
    n_rows: int = 0


def read_star(path: str | PathLike[str]) -> dict[str, StarBlock]:
    """Read every block of a STAR file, in file order.

    Parameters
    ----------
    path
        The STAR file.

    Returns
    -------
    dict
        Block name (``data_particles`` -> ``"particles"``, ``data_`` -> ``""``) to a
        ``pandas.DataFrame`` (loop block: one row per data line, one column per
        label, in file order) or a ``dict`` (list block: label -> value).

    Raises
    ------
    InputError
        The file is missing or unreadable, is not a STAR file, has a duplicated
        block or label, a row with the wrong number of values, or a value that
        is not a number under a numeric label (file, block, label and row named).
    """
    star = Path(path)
    text = _read_text(star)
    layouts = _scan(star, text)
    # starfile reads lines through linecache, which it clears only when it succeeds: a
    # copy left by a failed read would be parsed instead of the file as it is now
    linecache.cache.pop(str(star), None)
    try:
        blocks: dict[str, StarBlock] = starfile.read(
            star, always_dict=True, parse_as_string=sorted(TEXT_LABELS)
        )
    except (ValueError, KeyError, IndexError, pd.errors.ParserError) as error:
        raise InputError(f"{star}: cannot be read as a STAR file ({error})") from error
    finally:
        linecache.cache.pop(str(star), None)
    if [layout.name for layout in layouts] != list(blocks):
        raise InputError(
            f"{star}: blocks found ({', '.join('data_' + b for b in blocks)}) differ from "
            f"the data_ lines of the file; the file layout is not understood"
        )
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            blocks[name] = _check_numeric_table(star, name, block)
        else:
            _check_numeric_list(star, name, block)
    return blocks


def write_star(
    blocks: Mapping[str, pd.DataFrame | Mapping[str, object]], path: str | PathLike[str]
) -> Path:
    """Write blocks to a STAR file, whole or not at all (``write_atomically``).

    Loop tables (DataFrames) are written as ``loop_`` blocks, dicts as list
    blocks, in the mapping's order. Floats keep ``FLOAT_DIGITS`` significant
    digits (and always a decimal point or exponent, so they read back as floats).

    Parameters
    ----------
    blocks
        Block name (without ``data_``) to a DataFrame or a dict.
    path
        The output file.

    Returns
    -------
    Path
        The written file.
    """
    if not blocks:
        raise ValueError("write_star needs at least one block")
    data: dict[str, pd.DataFrame | dict[str, str | int | float]] = {}
    for name, block in blocks.items():
        if any(c.isspace() for c in name):
            raise ValueError(f"block name {name!r} contains white space")
        if isinstance(block, pd.DataFrame):
            data[name] = block.reset_index(drop=True)
        elif isinstance(block, Mapping):
            data[name] = {str(k): _list_value(v) for k, v in block.items()}
        else:
            raise TypeError(f"block {name!r} is a {type(block).__name__}, not a DataFrame or dict")
    text = starfile.to_string(data, float_format=_format_float)

    def write(partial: Path) -> None:
        partial.write_text(text)

    return write_atomically(path, write)


def _format_float(value: float) -> str:
    text = f"{value:.{FLOAT_DIGITS}g}"
    if text.lstrip("-").isdigit():
        text += ".0"
    return text


def _list_value(value: object) -> str | int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str):
        return value
    if hasattr(value, "item"):  # a numpy scalar
        return _list_value(value.item())
    return str(value)


def _read_text(star: Path) -> str:
    if not star.exists():
        raise InputError(f"{star}: file does not exist")
    try:
        return star.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{star}: not a text (STAR) file ({error.reason})") from error
    except OSError as error:
        raise InputError(f"{star}: cannot be read ({error.strerror or error})") from error


def _split(star: Path, number: int, line: str) -> list[str]:
    if '"' not in line and "'" not in line:
        return line.split()
    try:
        return shlex.split(line)
    except ValueError as error:
        raise InputError(f"{star}: line {number}: {error}") from error


def _scan(star: Path, text: str) -> list[_Layout]:
    """One pass over the raw text: block and label layout, duplicates, row lengths."""
    layouts: list[_Layout] = []
    current: _Layout | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            current = _start_block(star, layouts, line[5:], number)
        elif current is None:
            continue
        elif line.startswith("loop_"):
            current.is_loop = True
        elif line.startswith("_") and current.n_rows == 0:
            _add_label(star, current, line, number)
        elif current.is_loop:
            values = _split(star, number, line.split("#", 1)[0])
            if not values:
                continue
            current.n_rows += 1
            if len(values) != len(current.labels):
                raise InputError(
                    f"{star}: data_{current.name} row {current.n_rows} (line {number}): "
                    f"{len(values)} values, expected {len(current.labels)} (one per label)"
                )
    if not layouts:
        raise InputError(f"{star}: not a STAR file (no data_ block found)")
    for layout in layouts:
        if not layout.labels:
            raise InputError(f"{star}: data_{layout.name} (line {layout.line}) has no labels")
    return layouts


def _start_block(star: Path, layouts: list[_Layout], name: str, number: int) -> _Layout:
    for layout in layouts:
        if layout.name == name:
            raise InputError(
                f"{star}: block data_{name} appears twice (lines {layout.line} and {number})"
            )
    layouts.append(_Layout(name=name, line=number))
    return layouts[-1]


def _add_label(star: Path, layout: _Layout, line: str, number: int) -> None:
    label = line.split()[0][1:]
    if label in layout.labels:
        raise InputError(
            f"{star}: data_{layout.name}: label {label} appears twice "
            f"(lines {layout.labels[label]} and {number}); each label must be given once"
        )
    layout.labels[label] = number
    if not layout.is_loop and len(_split(star, number, line)) != 2:
        raise InputError(
            f"{star}: data_{layout.name} line {number}: label {label} needs exactly one value"
        )


def _check_numeric_table(star: Path, name: str, table: pd.DataFrame) -> pd.DataFrame:
    for label in table.columns:
        if label not in NUMERIC_LABELS or pd.api.types.is_numeric_dtype(table[label]):
            continue
        column = table[label]
        numbers = pd.to_numeric(column, errors="coerce")
        bad = (numbers.isna() & column.notna()).to_numpy().nonzero()[0]
        if len(bad):
            raise InputError(
                f"{star}: data_{name} {describe_rows(bad)}: {label} is "
                f"{column.iloc[bad[0]]!r}, expected a number"
            )
        table[label] = numbers
    return table


def _check_numeric_list(star: Path, name: str, block: dict[str, str | int | float]) -> None:
    for label, value in block.items():
        if label in NUMERIC_LABELS and not isinstance(value, int | float):
            raise InputError(f"{star}: data_{name}: {label} is {value!r}, expected a number")
