"""Check that the installed torch is the version pinned in requirements/torch.txt (any build of it: CPU or CUDA).

    python tools/check-torch.py requirements/torch.txt [--require-cuda]

Exit 0 and one line naming the torch, its CUDA version and the pin; exit 1 with one line saying what differs.
`--require-cuda` also fails on a CPU-only build (the CUDA image must not ship one). Needs only the standard
library and torch: `make install` runs it before anything else is installed, the Docker build right after torch.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"^torch==([0-9][^\s#;]*)\s*(#.*)?$")


def pinned(path: Path) -> str:
    """The version of the one `torch==X` line of a requirements file."""
    found = [m.group(1) for line in path.read_text(encoding="utf-8").splitlines() if (m := PIN.match(line.strip()))]
    if len(found) != 1:
        raise SystemExit(f"check-torch: {path} must have exactly one 'torch==VERSION' line, has {len(found)}")
    return found[0]


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--require-cuda"]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    want = pinned(Path(args[0]))
    try:
        import torch
    except Exception as exc:  # not installed, or a broken install
        print(f"check-torch: torch cannot be imported ({type(exc).__name__}: {exc}); {args[0]} pins {want}")
        return 1
    have = torch.__version__.split("+", 1)[0]
    cuda = torch.version.cuda
    build = f"CUDA {cuda}" if cuda else "CPU only"
    if have != want:
        print(f"check-torch: torch {torch.__version__} ({build}) is installed, but {args[0]} pins {want}")
        return 1
    if "--require-cuda" in argv and not cuda:
        print(f"check-torch: torch {torch.__version__} is a CPU-only build; this image needs the CUDA build of {want} (PyPI's)")
        return 1
    print(f"check-torch: torch {torch.__version__} ({build}), the version {args[0]} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
