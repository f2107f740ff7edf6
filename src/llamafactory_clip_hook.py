"""Plug the ``clip`` stage into LLaMA-Factory in every interpreter.

Imported by ``llamafactory_clip_hook.pth`` at interpreter start, so it uses the standard library only and imports
nothing from LLaMA-Factory. It installs one meta-path finder that

* resolves ``llamafactory.clip_finetune`` from the directory beside this file (``llamafactory`` is LLaMA-Factory's
  regular package, whose ``__path__`` never includes our files in editable installs);
* when a patched LLaMA-Factory module (``PATCHES``) finishes importing, calls our patch on it (the patch checks
  the seams it relies on and raises one clear error when they moved).

Set ``LLAMAFACTORY_CLIP_DISABLE=1`` to leave LLaMA-Factory unpatched (the package stays importable).
"""

import importlib.abc
import importlib.util
import os
import sys


TESTED_RANGE = ">=0.9.5,<0.9.6"  # what the tests run (requirements.txt pins it); named in the seam error
COMPATIBLE_RANGE = ">=0.9.5"  # what setup.py declares: a newer release is checked at run time by the seams
DISABLE_ENV = "LLAMAFACTORY_CLIP_DISABLE"
PACKAGE = "llamafactory.clip_finetune"
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llamafactory", "clip_finetune")
# LLaMA-Factory module -> "our module:function" applied right after it is executed.
PATCHES = {
    "llamafactory.train.tuner": "llamafactory.clip_finetune.integration.tuner:patch_tuner",
    "llamafactory.webui.interface": "llamafactory.clip_finetune.integration.webui:patch_interface",
    "llamafactory.v1.launcher": "llamafactory.clip_finetune.integration.tuner:patch_v1_launcher",
    "llamafactory.api.app": "llamafactory.clip_finetune.integration.api:patch_api",
}


def is_disabled() -> bool:
    return os.getenv(DISABLE_ENV, "0").lower() in ("1", "true", "yes", "y")


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader, then applies the patch to the executed module."""

    def __init__(self, loader, patch_ref: str):
        self._loader = loader
        self._patch_ref = patch_ref

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module_name, func_name = self._patch_ref.split(":")
        getattr(importlib.import_module(module_name), func_name)(module)

    def __getattr__(self, name):  # get_source, get_code, is_package, ... for tools like inspect
        return getattr(self._loader, name)


class ClipStageFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == PACKAGE:
            return importlib.util.spec_from_file_location(
                PACKAGE, os.path.join(PACKAGE_DIR, "__init__.py"), submodule_search_locations=[PACKAGE_DIR]
            )
        if fullname in PATCHES and not is_disabled():
            spec = self._find_with_other_finders(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, PATCHES[fullname])
            return spec
        return None

    def _find_with_other_finders(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


def install() -> None:
    if not any(isinstance(finder, ClipStageFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, ClipStageFinder())


install()
