"""LIST in pages, as kubectl does: the page size and the continue token, for the operator and the CLI alike.

Kept apart from `api` so that the CLI, which reads through the sync client, imports no aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LIST_PAGE = 500  # items per page: a LIST of 40,000 Jobs never holds every body at once


def first_page(query: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"limit": str(LIST_PAGE), **(query or {})}


def next_page(query: Mapping[str, str], page: Mapping[str, Any]) -> dict[str, str] | None:
    """The query for the page after `page`, or None when it was the last."""
    token = (page.get("metadata") or {}).get("continue")
    return {**query, "continue": token} if token else None
