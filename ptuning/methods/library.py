"""Shared plumbing for the library-backed methods (OpenDelta, AdapterHub, PEFT).

A backend module never imports its library at module import time: the class, its knobs and its
formula stay importable without the library, so a user without (say) OpenDelta can still list,
validate and count every other row. The library is imported on first use through `import_library`,
which turns *any* failure while importing (missing package, incompatible version, a broken
dependency) into one `PtuningError` line naming the package and the command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import ClassVar

from ptuning.errors import PtuningError, one_line
from ptuning.methods.base import Method

#: INSTALL_HINTS key → (distribution name shown to the user, importable module)
PACKAGES: dict[str, tuple[str, str]] = {
    "opendelta": ("opendelta", "opendelta"),
    "adapterhub": ("adapters", "adapters"),
    "peft": ("peft", "peft"),
}


def import_library(key: str, module: str | None = None, who: str = "this method") -> ModuleType:
    """Import the library behind `key` (or `module`, e.g. the OpenDelta compatibility shim).

    Raises PtuningError("<who> needs the package 'X' ... install it with: ...") on any failure.
    """
    from ptuning import quiet
    from ptuning.methods import INSTALL_HINTS

    quiet.install()  # e.g. AdapterHub's T5 notices on every forward (ptuning/quiet.py)
    package, default_module = PACKAGES[key]
    try:
        return importlib.import_module(module or default_module)
    except Exception as exc:  # ImportError, or anything a broken/incompatible install raises on import
        raise PtuningError(
            f"{who} needs the package '{package}', which could not be imported ({one_line(exc)}); "
            f"install it with: {INSTALL_HINTS[key]}"
        ) from exc


class LibraryMethod(Method):
    """A `Method` implemented by a third-party library (imported lazily, see `import_library`)."""

    #: key into INSTALL_HINTS / PACKAGES
    library: ClassVar[str] = ""

    @classmethod
    def check_library(cls) -> None:
        """Import the library now; raise the one-line PtuningError if it is missing or broken.

        Cheap to call more than once. The runner may call it while validating a job, before it
        spends time loading a model and a data set.
        """
        cls._import()

    @classmethod
    def _import(cls) -> ModuleType:
        return import_library(cls.library, who=f"{cls.name}/{cls.implementation}")
