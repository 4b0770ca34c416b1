"""Links of searchset and history Bundles: absolute self/next URLs carrying an opaque cursor."""

from __future__ import annotations

from urllib.parse import urlencode


def page_links(url: str, params: list[tuple[str, str]], cursor: str | None, next_cursor: str | None,
               fmt_params: list[tuple[str, str]], prev_cursor: str | None = None) -> list[tuple[str, str]]:
    base_params = params + fmt_params

    def link(c: str | None) -> str:
        ps = base_params + ([("_cursor", c)] if c else [])
        return url + ("?" + urlencode(ps, safe="|,:/$") if ps else "")

    links = [("self", link(cursor))]
    if next_cursor:
        links.append(("next", link(next_cursor)))
    if prev_cursor:
        links.append(("previous", link(prev_cursor)))
    return links


def format_params(query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """_format and _pretty travel along into paging links so every page comes in one format."""
    return [(k, v) for k, v in query if k in ("_format", "_pretty")]
