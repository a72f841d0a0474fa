"""Kubernetes resource.Quantity: canonical formatting and exact parsing.

The API server re-encodes every quantity it stores ("1000" comes back as
"1k"), so the publisher compares quantities by value, never by text. We emit
the same canonical text Go's Quantity would, so a stored slice reads back
byte-identical to what was sent.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX_BY_EXP = {v: k for k, v in _DECIMAL.items() if v > 0}
_BINARY_SUFFIX_BY_EXP = {v: k for k, v in _BINARY.items()}

_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?\Z"
)


class QuantityError(ValueError):
    """The text is not a Kubernetes quantity."""


@functools.lru_cache(maxsize=4096)
def parse_quantity(text: str | int) -> Fraction:
    """The exact value of a quantity ("80Gi", "1k", "1500m", "12e3", or a bare int).

    Cached: a node's slices repeat the same few dozen quantity texts.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return Fraction(text)
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise QuantityError(f"{text!r} is not a quantity")
    number = Fraction(m.group(1))
    suffix = m.group(2) or ""
    if suffix in _BINARY:
        return Fraction(number * 1024 ** _BINARY[suffix])
    exp = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:])
    return Fraction(number * 10**exp if exp >= 0 else number / 10**-exp)


def format_quantity(value: int, binary: bool = False) -> str:
    """Go's canonical text for a non-negative integer quantity.

    binary=True is resource.BinarySI (what memory sizes use): the largest
    power-of-1024 suffix that divides the value, plain digits below 1024.
    Otherwise resource.DecimalSI: the largest power-of-1000 suffix that divides.
    """
    if value < 0:
        raise QuantityError(f"negative quantity {value}")
    if binary and value >= 1024:
        exp = 0
        while exp < 6 and value % 1024 == 0:
            value //= 1024
            exp += 1
        return f"{value}{_BINARY_SUFFIX_BY_EXP.get(exp, '')}"
    exp = 0
    while value and exp < 18 and value % 1000 == 0:
        value //= 1000
        exp += 3
    return f"{value}{_DECIMAL_SUFFIX_BY_EXP.get(exp, '')}"


@functools.lru_cache(maxsize=4096)
def quantity_key(text: str | int) -> str:
    """A canonical comparison key: equal keys mean equal quantities."""
    try:
        return str(parse_quantity(text))
    except QuantityError:
        return f"invalid:{text}"
