"""Copy a sweep's results into the repository: every file but adapters and per-run figures (the report's figures
stay), so that a long sweep's finished rows can be committed as they complete and a later session resumes from them.

Usage: .venv/bin/python scripts/copy_results.py SWEEP_FOLDER DEST  (run `ia2 report SWEEP_FOLDER` first, while the
adapters exist, so that overlaps.json holds their subspace overlaps).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def kept(path: Path) -> bool:
    """Rows, configs, logs and reports; not adapters, and not the per-run figures a report regenerates."""
    parts = path.parts
    return "adapters" not in parts and not (parts[0] == "runs" and path.suffix == ".png")


def main(source: Path, dest: Path) -> None:
    files = [p.relative_to(source) for p in source.rglob("*") if p.is_file()]
    for rel in filter(kept, files):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, dest / rel)
    print(f"copied {sum(map(kept, files))} of {len(files)} files from {source} to {dest}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
