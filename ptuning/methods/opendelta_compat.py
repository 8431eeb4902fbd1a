"""Make `import opendelta` (0.3.2, last released 2022) work with the pinned transformers 4.57.6.

Imported ONLY by `ptuning.methods.opendelta_backend`, and only when a job asks for an OpenDelta row:
the three stand-ins below never reach a process that does not use OpenDelta. See docs/development.md.
"""

from __future__ import annotations

import sys
import types

# 1. opendelta/basemodel.py does `from transformers.deepspeed import ...`; that module moved to
#    transformers.integrations.deepspeed in transformers 4.46: alias the old name to the new module.
try:
    import transformers.deepspeed  # noqa: F401  (exists in transformers < 4.46)
except ImportError:
    import transformers.integrations.deepspeed

    sys.modules["transformers.deepspeed"] = transformers.integrations.deepspeed

# 2. opendelta/utils/saving_loading_utils.py does `from DeltaCenter import OssClient` (a cloud upload client
#    whose package pulls an object-storage SDK and needs setuptools < 82); nothing here uploads: stub it.
if "DeltaCenter" not in sys.modules:
    sys.modules["DeltaCenter"] = types.ModuleType("DeltaCenter")
    sys.modules["DeltaCenter"].OssClient = None  # type: ignore[attr-defined]

# 3. opendelta/basemodel.py has a stray, unused `from turtle import back`; turtle needs tkinter, which slim
#    images and some GPU machines lack: only where `import turtle` fails, stand in a module with `back`.
try:
    import turtle  # noqa: F401
except Exception:  # ImportError for a missing tkinter; a broken Tk install can raise others
    sys.modules["turtle"] = types.ModuleType("turtle")
    sys.modules["turtle"].back = None  # type: ignore[attr-defined]

import opendelta  # noqa: E402,F401  (after the three fixes above)
