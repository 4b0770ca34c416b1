"""Splitting and unescaping of search values (R4 search.html#escaping)."""

from __future__ import annotations


def split_escaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped with a backslash; unescape nothing yet."""
    parts: list[str] = []
    buf: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            buf.append(ch)
            nxt = next(it, "")
            buf.append(nxt)
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            out.append(nxt if nxt in ",|$\\" else "\\" + nxt)
        else:
            out.append(ch)
    return "".join(out)


def or_values(value: str) -> list[str]:
    """The comma-separated alternatives of one parameter occurrence, unescaped."""
    return [unescape(p) for p in split_escaped(value, ",")]
