"""CSV text of a batch of rows built column by column: what ``csv.writer`` writes, in about half the time.

``csv.writer`` handles every field of every row on its own, and that is most of a large CSV export.
Column by column, one scan of a column's joined text tells that none of its fields needs quotes,
which is the usual case, and a column of quoted fields is quoted with a few operations on its whole text.

The writer must stay byte for byte what ``csv.writer(delimiter=..., lineterminator="\\n")`` writes, on
whatever Python runs it, and the characters that make the csv module quote a field differ between
versions (3.13 quotes a lone ``\\r``, 3.11 does not).  So they are not assumed: they are found by asking
the csv module itself, over every code point, and the result is checked on awkward rows; where anything
differs there is no columnar writer and rows go through ``csv.writer``.
"""

from __future__ import annotations

import array
import csv
import functools
import io
import sys
from collections.abc import Callable, Sequence
from typing import Any

Rows = list[tuple[Any, ...]]

#: fields whose quoting is easy to get wrong, each tried in every column of the check
_AWKWARD = ("", " ", " lead", "trail ", '"', 'in "the" middle', '""', "a\nb", "a\rb", "a\r\nb", "\t", "\x00", "\x0b",
            "\x1c", "\x85", "\u2028", "é🐛修", "'", "\\", "=1+1", "-", "0",
            None, 0, -1, 1.0, -0.0, 1e300, 0.1 + 0.2, True)


def _reference(rows: Rows, delimiter: str) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _every_code_point() -> str:
    points = array.array("I", range(0xD800))  # no lone surrogates: they cannot be written
    points.extend(range(0xE000, 0x110000))
    if points.itemsize != 4:
        return "".join(map(chr, points))
    return points.tobytes().decode("utf-32-le" if sys.byteorder == "little" else "utf-32-be")


def _quoted(field: str, delimiter: str) -> bool:
    return _reference([(field, "")], delimiter).startswith('"')


def _quoting_characters(delimiter: str) -> str:
    """The characters whose presence makes the csv module quote a field, among every code point.

    The usual ones are tried one by one, then all the others at once, halving them only if they are quoted.
    """
    every = _every_code_point()
    usual = sorted(set(delimiter + '"\n\r'))
    found = [char for char in usual if _quoted(char, delimiter)]
    cuts = [ord(char) - (0x800 if ord(char) > 0xDFFF else 0) for char in usual]  # their places in ``every``
    others = "".join(every[start + 1:end] for start, end in zip([-1, *cuts], [*cuts, len(every)]))

    def search(text: str) -> None:
        if not _quoted(text, delimiter):
            return
        if len(text) == 1:
            found.append(text)
            return
        search(text[:len(text) // 2])
        search(text[len(text) // 2:])

    search(others)
    return "".join(found)


@functools.cache
def columnar_writer(delimiter: str, width: int) -> Callable[[Rows], str] | None:
    """A function from a batch of ``width``-field rows to their CSV text, or ``None`` to use ``csv.writer``."""
    quoting = _quoting_characters(delimiter)
    if '"' not in quoting or width < 2:  # a lone field is quoted when empty: not worth a case of its own
        return None

    def quoted(fields: Sequence[str], text: str) -> Sequence[str]:
        """The fields as written: quoted, their quotes doubled, where one of the characters is in them."""
        present = [char for char in quoting if char in text]
        if not present:
            return fields
        marks = [present[0] in field for field in fields]  # ``in`` is several times faster than a regex here
        for char in present[1:]:
            marks = [mark or char in field for mark, field in zip(marks, fields)]
        apart = next((char for char in "\x00\x01\x02\uffff" if char not in text), None)
        if apart is None:
            return ['"' + field.replace('"', '""') + '"' if mark else field for field, mark in zip(fields, marks)]
        # every field quoted at once, by string operations on the whole column
        every = ('"' + apart.join(fields).replace('"', '""').replace(apart, f'"{apart}"') + '"').split(apart)
        if marks.count(False) == 0:
            return every
        return [quote if mark else field for field, quote, mark in zip(fields, every, marks)]

    def write(rows: Rows) -> str:
        if not rows:
            return ""
        count = len(rows)
        columns: list[Sequence[str]] = []
        for column in zip(*rows, strict=True):
            nones = column.count(None)
            if nones == count:
                columns.append(("",) * count)
                continue
            if nones == 0:
                try:
                    text = "".join(column)
                except TypeError:
                    fields = list(map(str, column))
                else:
                    columns.append(quoted(column, text))  # text throughout: the fields are the values
                    continue
            else:
                fields = [value if type(value) is str else "" if value is None else str(value) for value in column]
            columns.append(quoted(fields, "".join(fields)))
        return "\n".join(map(delimiter.join, zip(*columns))) + "\n"

    awkward = [tuple(_AWKWARD[(row + column) % len(_AWKWARD)] for column in range(width))
               for row in range(len(_AWKWARD))]
    awkward += [(None,) * width, ("",) * width, (delimiter,) * width]
    crowded = [*awkward, ('\x00\x01\x02\uffff"',) * width]  # no character to part the fields with
    if write(awkward) != _reference(awkward, delimiter) or write(crowded) != _reference(crowded, delimiter):
        return None
    return write
