"""Kubernetes-style quantities as the contract takes them: cpus 2 / "1.5" / "500m",
memory and storage 8589934592 / "8Gi" / "512M"."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from launch_site.limits import MAX_BYTES, MAX_CPUS_MILLIS

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]{0,2})\s*$")


def parse_cpus(value: object) -> int:
    """Millicores, or ValueError with a message for the user."""
    if isinstance(value, bool) or value is None:
        raise ValueError("must be a number of CPUs such as 1, 0.5 or \"500m\"")
    text = str(value).strip()
    try:
        if text.endswith("m"):
            millis = Decimal(text[:-1])
        else:
            millis = Decimal(text) * 1000
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number of CPUs such as 1, 0.5 or \"500m\"") from None
    if not millis.is_finite():  # "nan", "inf", 1e309 (which JSON parses as infinity)
        raise ValueError(f"{value!r} is not a finite number of CPUs")
    if millis <= 0 or millis != millis.to_integral_value():
        raise ValueError(f"{value!r} must be a positive amount of CPUs (at least 1m)")
    if millis > MAX_CPUS_MILLIS:
        raise ValueError(f"{value!r} is more than the {MAX_CPUS_MILLIS // 1000} CPUs one replica may ask for")
    return int(millis)


def parse_bytes(value: object) -> int:
    """Bytes from 8589934592, "8Gi", "512Mi", "1G"; ValueError with a message otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError("must be a size such as \"8Gi\" or \"512Mi\"")
    if isinstance(value, (int, float)):
        amount, unit = Decimal(str(value)), ""
    else:
        match = _QUANTITY.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size such as \"8Gi\" or \"512Mi\"")
        amount, unit = Decimal(match.group(1)), match.group(2)
    multiplier = _BINARY.get(unit) or _DECIMAL.get(unit)
    if multiplier is None:
        raise ValueError(f"{value!r} has an unknown unit {unit!r} (use Ki, Mi, Gi, Ti or k, M, G, T)")
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite size")
    size = int(amount * multiplier)
    if size <= 0:
        raise ValueError(f"{value!r} must be a positive size")
    if size > MAX_BYTES:
        raise ValueError(f"{value!r} is more than the 1Pi one replica may ask for")
    return size
