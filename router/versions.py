"""Artifact version names: one strict pattern, checked wherever a version comes in.

A version becomes a path segment (`<registry>/versions/<version>/...`, the local cache) and a
label value, so it must never carry a path separator, `..`, a scheme, a query or anything a
URL or a shell would read specially. Training makes `20260101-120000-knn-1a2b3c4d`; operators
may name their own (`v1`, `2026.01-rc1`). Kept free of imports so app/config.py can use it.
"""

from __future__ import annotations

import re

LATEST = "latest"
# Starts with a letter or digit; then letters, digits, `.`, `_`, `-`; at most 128 characters.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_VERSION = re.compile(VERSION_PATTERN)


class VersionNameError(ValueError):
    """A version name outside VERSION_PATTERN (or with `..`)."""


def check_version(version: object, *, allow_latest: bool = True) -> str:
    """`version` if it is a valid version name (or `latest`), else VersionNameError saying why."""
    if isinstance(version, str) and version == LATEST and allow_latest:
        return version
    if version == LATEST:  # the pointer's name, never a version's own
        raise VersionNameError("`latest` names the registry's pointer, not a version; give a version name")
    if not isinstance(version, str) or not _VERSION.fullmatch(version) or ".." in version:
        shown = repr(version) if not isinstance(version, str) or len(version) <= 80 else repr(version[:80] + "...")
        raise VersionNameError(
            f"artifact version {shown} is not a valid version name: use letters, digits, '.', '_' and '-' "
            f"(first a letter or digit, no '..', at most 128 characters){', or `latest`' if allow_latest else ''}")
    return version
