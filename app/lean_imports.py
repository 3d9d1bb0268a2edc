"""Imports that would otherwise pull heavy libraries into processes that never use them.

`skops.io` builds its list of trusted types with `sklearn.utils.all_estimators()`, which walks
every sklearn subpackage, including `sklearn.externals.array_api_compat.torch`, whose
`__init__` imports torch when it is installed. That one walk costs a router replica about
300 MB of resident memory (docs/benchmarks.md, "Gateway memory") for a library no router
family or the static featurizer calls. `skops_io()` imports skops.io with torch hidden for the
duration of that import only; pkgutil skips a package whose import fails with ImportError, and
code that wants torch later (the ONNX export, the `torch` featurizer backend) imports it as usual.

Ray Serve's `ray.serve._private.utils` imports pandas (and with it pyarrow) only to register a
JSON encoder for DataFrames, which a gateway never returns: about 65 MB in every Serve process
(controller, proxies, each replica) and the driver. `setup_worker` (Ray's
`worker_process_setup_hook`, set by `doka run`) and `skip_serve_pandas` deny that one import;
any other module that imports pandas gets it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


class _Hidden:
    """A meta-path finder that makes the named top-level packages raise ImportError."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ImportError(f"{name} hidden while importing a module that does not need it")
        return None


@contextmanager
def hidden(*names: str) -> Iterator[None]:
    """Within the block, importing any of `names` (not yet imported) raises ImportError."""
    wanted = frozenset(n for n in names if n not in sys.modules)
    if not wanted:
        yield
        return
    finder = _Hidden(wanted)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def skops_io() -> ModuleType:
    """`skops.io`, imported without letting sklearn's estimator discovery load torch (and other
    libraries a router never calls)."""
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    # The same walk also imports pandas/pyarrow, pytest, rich and pygments (sklearn's optional
    # test and display helpers): ~25 MB more, and skops trusts the same 208 estimator types without them.
    with hidden("torch", "pandas", "pyarrow", "pytest", "rich", "pygments"):
        return importlib.import_module("skops.io")


_SERVE_UTILS = "ray/serve/_private/utils.py"


class _NoPandasForServe:
    """Denies pandas/pyarrow to Ray Serve's optional DataFrame-encoder import, and only to it."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] not in ("pandas", "pyarrow"):
            return None
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.endswith(_SERVE_UTILS) and frame.f_code.co_name == "<module>":
                raise ImportError("pandas is not loaded for Ray Serve's optional DataFrame encoder")
            frame = frame.f_back
        return None


def skip_serve_pandas() -> None:
    """Install the guard in this process (idempotent); call before the first `import ray.serve`."""
    if not any(isinstance(f, _NoPandasForServe) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandasForServe())


def setup_worker() -> None:
    """Ray `worker_process_setup_hook` for gateway workers: runs before an actor's code loads."""
    skip_serve_pandas()
