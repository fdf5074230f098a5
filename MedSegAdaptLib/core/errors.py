"""User-facing errors (bad input that the user can fix) and the closest-match hint they carry."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["InputError", "closest_matches", "unknown_name"]


class InputError(ValueError):
    """Bad input: the message names the file or value and says what was expected.

    The command line prints the message (no traceback) and exits with status 2.
    """


def closest_matches(value: str, names: Iterable[str], count: int = 1, cutoff: float = 0.5) -> list[str]:
    """Up to `count` of `names` closest to `value` ignoring case (difflib ratio >= cutoff), best first,
    spelled as in `names`."""
    by_key = {name.casefold(): name for name in names}
    return [by_key[key] for key in difflib.get_close_matches(value.casefold(), list(by_key), n=count, cutoff=cutoff)]


def unknown_name(what: str, value: str, available: Iterable[str], where: str) -> InputError:
    """InputError for an unknown name, listing the known ones and the closest match."""
    names = list(available)
    close = closest_matches(value, names)
    hint = f"; closest match: {close[0]!r}" if close else ""
    listing = ", ".join(repr(name) for name in names[:20]) or "none"
    return InputError(f"Unknown {what} {value!r} in {where}; available: {listing}{hint}")
