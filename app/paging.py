"""A page of rows as the pager reads it (`pager` in templates/macros/ui.html): its query, rows and total."""
from __future__ import annotations

import math
from typing import Any


class Paged:
    """Pager arithmetic for a dataclass with `query` (page, per_page), `rows` and `total`."""

    query: Any
    rows: list[Any]
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.query.per_page))

    @property
    def first_index(self) -> int:
        return (self.query.page - 1) * self.query.per_page + 1 if self.rows else 0

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.rows) - 1 if self.rows else 0
