"""--labels: a class or an attribute vector for every input, decided before anything is written.

* ``folders``: the class is the first path component below SRC (a folder or a zip), classes in
  sorted order as torchvision's ImageFolder numbers them; an image at the top level has none.
* ``shapes`` (synthetic:N only): the kind of the first shape drawn (`synthetic_class`).
* ``backgrounds`` (synthetic:N only): the gradient's colours (`synthetic_background`).
* a table FILE keyed by file name: a CSV (``file,col1,col2``; commas on the first line), or a
  whitespace-separated table, CelebA's attribute files included (``30000`` / the 40 attribute
  names / ``0.jpg  1 -1 ...``). A header with one name fewer than the rows' fields names the
  value columns only. One chosen column gives classes (its distinct values, sorted: numerically
  when all are integers); several give 0/1 attribute vectors (1 -> 1; -1 or 0 -> 0).

An input is looked up by its path relative to SRC, then by its file name. Inputs without a label
(not in the table, on a bad row, at the top level) are skipped with the reason; a table that
cannot be read as one, or a --label-columns name it lacks, is a PrepError (one line).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import posixpath
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from data_prep.errors import PrepError
from data_prep.files import FileTooLarge, NotRegularFile, open_regular, read_at_most
from data_prep.sources import SYNTHETIC_PREFIX, SourceSet
from data_prep.synthetic import BACKGROUNDS, SHAPES, synthetic_background, synthetic_class

_ATTRIBUTE_VALUES = {"1": 1, "-1": 0, "0": 0}
# The built-in set's own classes: --labels NAME -> (class names, class of image index for seed).
SYNTHETIC_LABELS = {"shapes": (SHAPES, synthetic_class), "backgrounds": (BACKGROUNDS, synthetic_background)}


@dataclass(frozen=True)
class LabelPlan:
    """What the labels are: written to the manifest (kind, names, source) and, as `params`,
    compared when an output is reused or resumed."""

    kind: str  # "class" | "attributes"
    names: list[str]  # classes or attributes, in index order
    source: str
    params: dict


def parse_columns(text: str | None) -> list[str] | None:
    """--label-columns "a,b,c" as a list (None: all)."""
    return None if text is None else [c.strip() for c in text.split(",")]


def attach_labels(sources: SourceSet, src: str, labels: str, columns: list[str] | None,
                  *, seed: int, max_bytes: int) -> tuple[SourceSet, LabelPlan]:
    """The sources with each item's label (or the reason it has none) set, and the plan."""
    synthetic = src.startswith(SYNTHETIC_PREFIX)
    if columns is not None and labels in ("folders", *SYNTHETIC_LABELS):
        raise PrepError(f"--label-columns: only for --labels FILE, not --labels {labels}")
    if labels in SYNTHETIC_LABELS:
        if not synthetic:
            raise PrepError(f"--labels {labels}: only for synthetic:N (--src is {src})")
        names, label_of = SYNTHETIC_LABELS[labels]
        items = [replace(it, label=label_of(it.index, seed)) for it in sources.items]
        return (SourceSet(items, sources.fingerprint),
                LabelPlan("class", list(names), labels, {"from": labels}))
    if synthetic:
        raise PrepError(f"--labels {labels}: synthetic:N has no folders or file names; "
                        "use --labels shapes or backgrounds")
    if labels == "folders":
        return _from_folders(sources, src)
    return _from_table(sources, Path(labels), columns, max_bytes)


def _from_folders(sources: SourceSet, src: str) -> tuple[SourceSet, LabelPlan]:
    firsts = []
    for item in sources.items:
        parts = [p for p in item.source.split("/") if p not in ("", ".")]
        firsts.append(parts[0] if len(parts) > 1 else None)
    names = sorted({f for f in firsts if f is not None})
    if not names:
        raise PrepError(f"--labels folders: no image of {src} is in a class folder "
                        "(expected SRC/<class>/.../<image>)")
    index = {name: i for i, name in enumerate(names)}
    items = [replace(it, label=index[f]) if f is not None else
             replace(it, unlabelled="no label: at the top level of --src, not in a class folder")
             for it, f in zip(sources.items, firsts, strict=True)]
    return SourceSet(items, sources.fingerprint), LabelPlan("class", names, "folders", {"from": "folders"})


@dataclass
class _Table:
    name: str  # the file name, for messages and the manifest
    columns: list[str]
    rows: dict[str, tuple[int, list[str]]]  # key -> (line number, values)
    bad: dict[str, str]  # key -> why its row cannot be used


def _read_text(path: Path, max_bytes: int) -> tuple[str, str]:
    """The file's text and the SHA-256 of its bytes."""
    where = f"--labels {path}"
    try:
        with open_regular(path, max_bytes) as f:
            data = read_at_most(f, max_bytes)
    except FileNotFoundError:
        raise PrepError(f"{where}: no such file (give folders, shapes or a table file)") from None
    except NotRegularFile as exc:
        raise PrepError(f"{where}: not a table file (a {exc})") from None
    except FileTooLarge:
        raise PrepError(f"{where}: larger than --max-file-mb") from None
    except OSError as exc:
        raise PrepError(f"{where}: unreadable: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PrepError(f"{where}: not a text table (not UTF-8)") from None
    if "\0" in text:
        raise PrepError(f"{where}: not a text table (holds NUL bytes)")
    return text, hashlib.sha256(data).hexdigest()


def _read_table(path: Path, max_bytes: int) -> tuple[_Table, str]:
    """The table in `path` and the SHA-256 of its bytes; PrepError when it is not one."""
    text, digest = _read_text(path, max_bytes)
    where = f"--labels {path}"
    lines = [(no, line) for no, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise PrepError(f"{where}: empty")
    comma = "," in lines[0][1]
    fields = [(no, [f.strip() for f in next(csv.reader([line]))] if comma else line.split())
              for no, line in lines]
    declared = None
    if not comma and len(fields[0][1]) == 1 and fields[0][1][0].isdigit():
        declared = int(fields[0][1][0])  # CelebA's files start with their row count
        fields = fields[1:]
    if len(fields) < 2:
        raise PrepError(f"{where}: no rows under the header (expected a header line naming the "
                        "columns, then one line per image: file name, values)")
    (header_no, header), rows = fields[0], fields[1:]
    width = Counter(len(f) for _, f in rows).most_common(1)[0][0]
    if len(header) == width - 1:  # CelebA: the header names the value columns only
        columns = header
    elif len(header) == width:
        columns = header[1:]
    else:
        raise PrepError(f"{where}: line {header_no}: the header names {len(header)} columns, "
                        f"but most rows have {width} fields")
    if not columns:
        raise PrepError(f"{where}: no label columns, only file names")
    dupes = sorted(c for c, n in Counter(columns).items() if n > 1)
    if dupes or not all(columns):
        raise PrepError(f"{where}: line {header_no}: column names must be distinct and non-empty"
                        + (f" ({dupes[0]!r} is there twice)" if dupes else ""))
    if declared is not None and declared != len(rows):
        raise PrepError(f"{where}: line 1 says {declared} rows, the file holds {len(rows)} "
                        "(truncated?)")
    table = _Table(path.name, columns, {}, {})
    first_line: dict[str, int] = {}
    for no, f in rows:
        key = f[0]
        if key in first_line:
            table.rows.pop(key, None)
            table.bad[key] = f"lines {first_line[key]} and {no} both label it"
            continue
        first_line[key] = no
        if len(f) != len(columns) + 1:
            table.bad[key] = f"line {no}: {len(f)} fields, expected {len(columns) + 1}"
        else:
            table.rows[key] = (no, f[1:])
    return table, digest


def _pick_columns(table: _Table, path: Path, columns: list[str] | None) -> list[int]:
    if columns is None:
        return list(range(len(table.columns)))
    if not all(columns):
        raise PrepError(f"--label-columns: an empty name in {','.join(columns)!r}")
    dupes = sorted(c for c, n in Counter(columns).items() if n > 1)
    if dupes:
        raise PrepError(f"--label-columns: {dupes[0]!r} given twice")
    for name in columns:
        if name not in table.columns:
            close = difflib.get_close_matches(name, table.columns, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            shown = ", ".join(table.columns[:12]) + (", ..." if len(table.columns) > 12 else "")
            raise PrepError(f"--label-columns: no column {name!r} in {path} ({hint}it has {shown})")
    return [table.columns.index(name) for name in columns]


def _class_names(values: list[str]) -> list[str]:
    try:
        return sorted(set(values), key=int)
    except ValueError:
        return sorted(set(values))


def _from_table(sources: SourceSet, path: Path, columns: list[str] | None,
                max_bytes: int) -> tuple[SourceSet, LabelPlan]:
    table, digest = _read_table(path, max_bytes)
    picked = _pick_columns(table, path, columns)
    names = [table.columns[i] for i in picked]
    values: dict[str, int | tuple[int, ...]] = {}
    bad = dict(table.bad)
    if len(picked) == 1:
        col = picked[0]
        for key, (no, row) in table.rows.items():
            if not row[col]:
                bad[key] = f"line {no}: no value in column {names[0]!r}"
        classes = _class_names([row[col] for key, (_, row) in table.rows.items() if key not in bad])
        if not classes:
            raise PrepError(f"--labels {path}: column {names[0]!r} holds no value")
        index = {c: i for i, c in enumerate(classes)}
        values = {key: index[row[col]] for key, (_, row) in table.rows.items() if key not in bad}
        plan = LabelPlan("class", classes, f"{table.name}, column {names[0]}",
                         {"from": "table", "sha256": digest, "columns": names})
    else:
        for i, name in zip(picked, names, strict=True):
            column = [row[i] for _, row in table.rows.values()]
            if column and not any(v in _ATTRIBUTE_VALUES for v in column):
                raise PrepError(f"--labels {path}: column {name!r} holds {column[0]!r}, not 1/-1/0 "
                                "attributes (several columns are attribute vectors; choose one "
                                "with --label-columns for classes)")
        for key, (no, row) in table.rows.items():
            wrong = next((n for i, n in zip(picked, names, strict=True)
                          if row[i] not in _ATTRIBUTE_VALUES), None)
            if wrong is not None:
                value = row[table.columns.index(wrong)]
                bad[key] = f"line {no}: column {wrong!r} is {value!r}, not 1, -1 or 0"
            else:
                values[key] = tuple(_ATTRIBUTE_VALUES[row[i]] for i in picked)
        plan = LabelPlan("attributes", names, table.name,
                         {"from": "table", "sha256": digest, "columns": names})

    base_counts = Counter(posixpath.basename(it.source) for it in sources.items)
    items = []
    for it in sources.items:
        key, base = it.source, posixpath.basename(it.source)
        if key not in values and key not in bad and (base in values or base in bad):
            if base_counts[base] > 1:
                items.append(replace(it, unlabelled=f"no label: {base_counts[base]} inputs are named "
                                                    f"{base!r}; key {table.name} by path below --src"))
                continue
            key = base
        if key in values:
            items.append(replace(it, label=values[key]))
        elif key in bad:
            items.append(replace(it, unlabelled=f"bad label row in {table.name}: {bad[key]}"))
        else:
            items.append(replace(it, unlabelled=f"no label: not in {table.name}"))
    return SourceSet(items, sources.fingerprint), plan
