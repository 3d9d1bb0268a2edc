"""`doka router bootstrap`: make sure a registry has a default learned router.

Used by `make run`: if the registry already has a `latest` artifact that verifies, nothing
happens. Otherwise it imports RouterBench (or, when the shared data is missing, uses the
in-repo seed set `training/seed/routerbench_seed.jsonl`), trains the default family and publishes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from router.artifact import ArtifactError, ensure_local_key, verify_signature
from router.registry import Registry
from training.dataset import DatasetError
from training.routerbench import DEFAULT_ROUTERBENCH_DIR, import_routerbench
from training.train import train

# best leave-one-task-out APGR (docs/benchmarks.md), not best in distribution; `gated` ties it there
# and is better in distribution, at ~0.3 ms and ~11 MB more per routing replica (docs/routing.md)
DEFAULT_FAMILY = "difficulty"
SEED_DATASET = Path(__file__).resolve().parent / "seed" / "routerbench_seed.jsonl"


def bootstrap(
    registry: str,
    routerbench_dir: str = DEFAULT_ROUTERBENCH_DIR,
    family: str = DEFAULT_FAMILY,
    work_dir: str = ".doka",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    key = ensure_local_key(Path(work_dir) / "signing.key") if not os.environ.get("DOKA_SIGNING_KEY") else None
    reg = Registry(registry)
    current = reg.latest_version()
    if current and not force:
        try:
            verify_signature(reg.resolve(current, key), key)
            return {"action": "kept", "version": current, "registry": registry}
        except ArtifactError as e:
            print(f"existing artifact {current} does not verify ({e}); training a new one")
    try:
        summary = import_routerbench(routerbench_dir, Path(work_dir) / "data" / "routerbench")
        data, source = summary["train"]["path"], f"RouterBench train split ({routerbench_dir})"
    except (DatasetError, KeyError):
        data, source = str(SEED_DATASET), "in-repo seed set"
    out = Path(work_dir) / "artifacts" / f"bootstrap-{family}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    path = train(data, family, out, signing_key=key, holdout=0.0, progress=progress)
    version = reg.publish(path, key=key)
    return {"action": "published", "version": version, "registry": registry, "data": source}
