"""The client's `x-request-id`: a bounded, validated correlation field, never a key.

doka generates every request's id itself (`x-doka-request-id`: the ledger row, the trace,
`/v1/feedback`). A client's own id is kept beside them only for correlating with its logs.
"""

from __future__ import annotations

import re
from typing import Any

CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def valid_correlation_id(value: Any) -> str | None:
    """`value` when it is at most 128 characters of [A-Za-z0-9._:-], else None (dropped).

    Dropped rather than refused: proxies add ids of their own, and a request must not fail over
    a header doka does not need.
    """
    return value if isinstance(value, str) and CORRELATION_ID.fullmatch(value) else None


def correlation_id_of(request: Any) -> str | None:
    """The request's valid `x-request-id` header, else None."""
    return valid_correlation_id(request.headers.get("x-request-id"))
