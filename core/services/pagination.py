"""Cursor pagination in OpenAI's style: `after` is the id of the last item already seen.

Ids sort by creation (core.models.new_id, autoincrement ints), so "newest first, after X"
is simply `id < X`; fetching one extra row tells whether there is more. An `after` that
names no item of the list is refused (400 naming `after`) on every list alike: answering
with the first page instead would make a client with a stale or mistyped cursor loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from core.errors import InvalidRequest

T = TypeVar("T")
MAX_LIMIT = 100


@dataclass
class Page(Generic[T]):
    data: list[T]
    has_more: bool


def check_limit(limit: int, maximum: int = MAX_LIMIT) -> int:
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}", param="limit")
    return limit


def paginate(
    session: Session, stmt: Select, id_column: Any, *, after: Any, limit: int, newest_first: bool = True, cursor: str | None = None
) -> Page:
    """`cursor` is `after` as the client sent it, when the column holds a parsed form of it."""
    check_limit(limit)
    if after is not None:
        if session.scalars(stmt.where(id_column == after).limit(1)).first() is None:
            shown = cursor if cursor is not None else str(after)
            raise InvalidRequest(f"after={shown[:80]!r} is not the id of an item in this list", param="after")
        stmt = stmt.where(id_column < after if newest_first else id_column > after)
    stmt = stmt.order_by(id_column.desc() if newest_first else id_column.asc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return Page(rows[:limit], len(rows) > limit)
