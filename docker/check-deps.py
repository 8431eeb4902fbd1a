"""Fail the image build when an installed distribution's declared dependencies are not all present.

The package is installed with `pip install --no-deps` (OpenDelta's metadata cannot be resolved), so
nothing else would notice a dependency added to pyproject.toml but missing from the Dockerfile's
dependency layer. Usage: python check-deps.py DIST_NAME
"""

import sys
from importlib import metadata

from packaging.requirements import Requirement


def main(dist_name: str) -> int:
    problems = []
    for spec in metadata.requires(dist_name) or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra or another platform
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req} is not installed")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req} is required but {req.name} {have} is installed")
    if problems:
        print(f"{dist_name}: dependencies missing from the image (add them to docker/Dockerfile):")
        for p in problems:
            print("  - " + p)
        return 1
    print(f"{dist_name} {metadata.version(dist_name)}: all declared dependencies present")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
