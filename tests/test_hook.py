"""The import hook: active in every interpreter, light at start-up, routes only `stage: clip`, fails loudly."""

import os
import subprocess
import sys
import types
import zipfile

import pytest
from conftest import ROOT

import llamafactory_clip_hook
from llamafactory.clip_finetune.integration.seams import IncompatibleLlamaFactoryError
from llamafactory.clip_finetune.integration.tuner import is_clip_stage, patch_tuner


def python(code, *flags, **env):
    """Run code in a fresh interpreter; returns the words it printed after `RESULT` (logs go to stdout too)."""
    out = subprocess.run(
        [sys.executable, *flags, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout + out.stderr
    return lines[-1].split()[1:]


def test_pth_hook_is_active_and_imports_nothing_heavy():
    out = python(
        "import sys, llamafactory_clip_hook as h;"
        "print('RESULT', any(isinstance(f, h.ClipStageFinder) for f in sys.meta_path), 'torch' in sys.modules, "
        "'llamafactory' in sys.modules)"
    )
    assert out == ["True", "False", "False"]


def test_tuner_is_patched_in_a_fresh_interpreter():
    out = python(
        "import llamafactory.train.tuner as t, llamafactory.clip_finetune as c;"
        "print('RESULT', hasattr(t._training_function, '__clip_stage_original__'), c.__version__)",
        DISABLE_VERSION_CHECK="1",
    )
    assert out[0] == "True"


def test_disable_env_leaves_llamafactory_untouched():
    out = python(
        "import llamafactory.train.tuner as t, llamafactory.clip_finetune;"
        "print('RESULT', hasattr(t._training_function, '__clip_stage_original__'))",
        DISABLE_VERSION_CHECK="1",
        LLAMAFACTORY_CLIP_DISABLE="1",
    )
    assert out == ["False"]


def test_installed_llamafactory_has_the_seams_we_rely_on():
    """Breaks when LLaMA-Factory moves `_training_function`, `run_exp`, the Ray worker or `LogCallback`."""
    import llamafactory.train.tuner as tuner

    patch_tuner(tuner)  # idempotent on the real module; raises if a seam moved
    assert tuner._training_function.__clip_stage_original__.__module__ == "llamafactory.train.tuner"


def test_moved_seam_raises_one_clear_error():
    fake = types.ModuleType("llamafactory.train.tuner")
    fake.run_exp = lambda args=None, callbacks=None: None
    with pytest.raises(IncompatibleLlamaFactoryError) as err:
        patch_tuner(fake)
    message = str(err.value)
    assert "`llamafactory.train.tuner._training_function` is missing" in message
    assert "0.9.5" in message  # the version found
    assert llamafactory_clip_hook.TESTED_RANGE in message
    assert "pip install 'llamafactory>=0.9.5,<0.9.6'" in message
    assert "LLAMAFACTORY_CLIP_DISABLE=1" in message


def test_the_web_ui_internals_the_tab_uses_are_checked(monkeypatch):
    from llamafactory.webui import manager, runner

    from llamafactory.clip_finetune.integration.webui import check_webui_internals

    problems: list[str] = []
    check_webui_internals(problems)
    assert problems == []  # the installed LLaMA Board has them all
    monkeypatch.delattr(manager.Manager, "add_elems")

    class MovedRunner:
        def __init__(self):
            self.is_busy = False

    monkeypatch.setattr(runner, "Runner", MovedRunner)
    check_webui_internals(problems)
    assert problems == ["`MovedRunner` no longer sets `running`", "`Manager.add_elems` is missing"]


@pytest.mark.parametrize(
    "args, expected",
    [
        ({"stage": "clip"}, True),
        ({"stage": "sft"}, False),
        (["--stage", "clip", "--do_train"], True),
        (["--stage=clip"], True),
        (["--stage", "sft", "--template", "clip"], False),
        (None, False),
    ],
)
def test_is_clip_stage(args, expected):
    assert is_clip_stage(args) is expected


@pytest.mark.slow
def test_regular_wheel_ships_pth_hook_and_package(tmp_path):
    """`pip install .` (a regular wheel): the .pth and hook sit at the site-packages root beside the package."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("llamafactory_clip-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "llamafactory_clip_hook.pth" in names and "llamafactory_clip_hook.py" in names
    assert "llamafactory/clip_finetune/__init__.py" in names
    assert "llamafactory/clip_finetune/configs/clip_finetune/vit_b16.yaml" in names  # clip_config: vit_b16
    assert "llamafactory/__init__.py" not in names  # that file belongs to LLaMA-Factory
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    # a compatible range, not the tested pin: a newer LLaMA-Factory is judged by the seam check at run time
    assert "Requires-Dist: llamafactory>=0.9.5\n" in metadata and "Requires-Python: >=3.11" in metadata

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    venv_site = next(
        p for p in sys.path if p.endswith("site-packages") and os.path.isdir(os.path.join(p, "llamafactory"))
    )
    code = (  # -S: no site processing, so only the extracted wheel's .pth runs; LLaMA-Factory comes from venv_site
        f"import site, sys; site.addsitedir({str(site)!r}); sys.path.append({venv_site!r});"
        "import llamafactory.clip_finetune as c, llamafactory.train.tuner as t;"
        "print('RESULT', c.__file__, hasattr(t._training_function, '__clip_stage_original__'))"
    )
    out = python(code, "-S", DISABLE_VERSION_CHECK="1")
    assert out[0].startswith(str(site))
    assert out[1] == "True"
