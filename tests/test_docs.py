"""The docs tree: the generated arguments page is current, every registered method has its page and an example, and
every relative link in the docs points at a file that exists."""

import re
import subprocess
import sys

import yaml
from conftest import ROOT

from llamafactory.clip_finetune.dassl import translate_files
from llamafactory.clip_finetune.methods import METHODS


DOCS = [ROOT / "README.md", ROOT / "evaluation" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_arguments_page_is_generated_from_the_current_code():
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "arguments_doc.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_every_registered_method_has_a_page_and_an_example():
    examples = {}
    for path in (ROOT / "examples" / "clip").glob("*.yaml"):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        method = config.get("finetuning_type")
        if method is None and "clip_config" in config:  # a Dassl section may name the method
            method = translate_files(config["clip_config"], None).values.get("finetuning_type")
        examples.setdefault(method or "full", []).append(path.name)
    for name in METHODS:
        page = ROOT / "docs" / "methods" / f"{name}.md"
        assert page.is_file(), f"method {name} has no docs page {page}"
        assert f"finetuning_type: {name}" in page.read_text(encoding="utf-8")
        assert examples.get(name), f"method {name} has no example under examples/clip/"


def test_relative_links_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)
