"""Rewriting the references of Bundle entries: fullUrl placeholders (urn:uuid:, urn:oid:, any
entry's fullUrl) and conditional references (``Patient?identifier=sys|val``).

References live in ``reference`` members anywhere in a resource: top level, nested backbone
elements, extensions and contained resources; the narrative may link them with href/src."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_NARRATIVE_LINK = re.compile(r'(\b(?:href|src)\s*=\s*)(["\'])(.*?)\2', re.S)

Resolve = Callable[[str], str | None]  # reference -> replacement (None: leave it)


def rewrite_references(node: Any, resolve: Resolve) -> None:
    """Replace, in place, every reference ``resolve`` knows a replacement for."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if key == "reference":
                    new = resolve(value)
                    if new is not None:
                        node[key] = new
                elif key == "div" and ("href" in value or "src" in value):
                    node[key] = _rewrite_narrative(value, resolve)
            elif isinstance(value, dict | list):
                rewrite_references(value, resolve)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                rewrite_references(item, resolve)


def _rewrite_narrative(div: str, resolve: Resolve) -> str:
    def swap(m: re.Match[str]) -> str:
        new = resolve(m.group(3)) if not _is_conditional(m.group(3)) else None
        return m.group(0) if new is None else f"{m.group(1)}{m.group(2)}{new}{m.group(2)}"

    return _NARRATIVE_LINK.sub(swap, div)


def _is_conditional(reference: str) -> bool:
    head, sep, _ = reference.partition("?")
    return bool(sep) and "/" not in head and ":" not in head and head[:1].isupper()


def conditional_target(reference: str) -> tuple[str, str] | None:
    """(type, criteria) of a conditional reference such as ``Patient?identifier=a|b``."""
    if not _is_conditional(reference):
        return None
    head, _, query = reference.partition("?")
    return head, query
