"""Entry point of the router-training RayJob: fetch the dataset from any fsspec URL (s3:// on
MinIO), train with `doka router train`, publish with `doka router publish` (which moves
`latest`). Runs as the Ray job's driver, so `--ray` embeds on the whole cluster.

    python -m kuberay.train_job --family knn --data s3://doka/datasets/train.jsonl --registry s3://doka/registry
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import fsspec

from app.cli import main as doka


def fetch(url: str, work: Path) -> Path:
    """A local copy of the dataset (`doka router train` reads local files); local paths pass through."""
    if "://" not in url or url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    dest = work / "data.jsonl"
    with fsspec.open(url, "rb") as src, dest.open("wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kuberay.train_job", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="knn")
    p.add_argument("--data", required=True, help="JSONL dataset: path or fsspec URL")
    p.add_argument("--registry", required=True, help="artifact registry: path or fsspec URL")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--ray", action="store_true", help="embed with Ray Data on the cluster")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="doka-train-") as tmp:
        work = Path(tmp)
        artifact = work / "artifact"
        train = ["router", "train", "--family", args.family, "--data", str(fetch(args.data, work)),
                 "--out", str(artifact), "--quiet"]
        train += [x for param in args.param for x in ("--param", param)]
        rc = doka(train + (["--ray"] if args.ray else []))
        if rc:
            return rc
        return doka(["router", "publish", "--artifact", str(artifact), "--registry", args.registry])


if __name__ == "__main__":
    sys.exit(main())
