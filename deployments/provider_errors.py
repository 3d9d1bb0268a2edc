"""One mapping from a failed provider HTTP call to the `UpstreamError` the ingress's chain reads.

The pass-through path (deployments/egress.py) and the direct translations (deployments/translate.py)
post over the same aiohttp session, so they fail the same ways: no answer in time (504, marked as
a timeout so the chain says so), a broken connection (502) or a body that is not what the
provider's API promises (502). A provider's own 4xx/5xx is raised inside the block as an
`UpstreamError` already and passes through unchanged, as do cancellation and generator close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from app.errors import UpstreamError


@contextmanager
def provider_errors(timeout: float, *, stream: bool, invalid: str | None = None) -> Iterator[None]:
    """Inside the block, aiohttp and decoding failures become `UpstreamError`s.

    `stream`: the messages speak of data and a stream rather than an answer and a connection.
    `invalid`: the message for a body that does not parse (ValueError); None lets it propagate
    (a caller that parses outside the block, or maps parse errors itself).
    """
    try:
        yield
    except asyncio.TimeoutError:
        raise UpstreamError(504, f"no {'data' if stream else 'answer'} within {timeout:g}s", timed_out=True) from None
    except aiohttp.ClientError as e:
        what = "provider stream failed" if stream else "connection to provider failed"
        raise UpstreamError(502, f"{what}: {e}") from None
    except ValueError:
        if invalid is None:
            raise
        raise UpstreamError(502, invalid) from None
