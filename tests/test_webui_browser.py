"""End to end: `llamafactory-cli webui` on a loopback port, driven by Playwright in Debian's headless Chromium."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import DATA_DIR, ROOT, TINY_CLIP


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT_ENV = "CLIP_WEBUI_SCREENSHOT"  # also copy the screenshot there (the README's picture comes from it)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    """A real LLaMA Board with the CLIP tab, in a scratch working directory; stopped with its whole process tree."""
    from llamafactory.clip_finetune.webui.runner import stop_process_tree

    cwd = tmp_path_factory.mktemp("board")
    port = free_port()
    env = dict(
        os.environ,
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        BROWSER="true",  # `launch(inbrowser=True)` must not open anything
    )
    cli = shutil.which("llamafactory-cli", path=os.path.dirname(sys.executable)) or "llamafactory-cli"
    log = open(cwd / "webui.log", "w")
    process = subprocess.Popen([cli, "webui"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                stop_process_tree(process.pid)
                pytest.fail(f"llamafactory-cli webui did not start:\n{(cwd / 'webui.log').read_text()[-3000:]}")
            time.sleep(1)
    yield url, cwd
    stop_process_tree(process.pid)
    log.close()


@pytest.fixture(scope="module")
def page(webui):
    from playwright.sync_api import sync_playwright

    missing = f"{CHROMIUM} is missing: `apt-get install chromium chromium-driver` (.ci/run does)"
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):  # CI installs it: its absence there is a failure, not a skip
            pytest.fail(missing)
        pytest.skip(f"SKIPPED THE BROWSER TEST: {missing}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(webui[0], wait_until="domcontentloaded")
        page.get_by_role("tab", name="CLIP").click(timeout=120_000)
        yield page
        browser.close()


def fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()
    page.locator(f"#{elem_id} input").first.blur()


def test_clip_tab_trains_shows_progress_metrics_and_switches_language(webui, page, tmp_path):
    from playwright.sync_api import expect

    url, cwd = webui
    output_dir = tmp_path / "run"
    # the tab sits in LLaMA Board's own tab group, beside Train / Evaluate & Predict / Chat / Export
    tabs = page.get_by_role("tablist").first.get_by_role("tab")
    expect(tabs).to_contain_text(["Train", "Evaluate & Predict", "Chat", "Export", "CLIP"])

    fill(page, "clip_model", str(TINY_CLIP))
    page.keyboard.press("Enter")
    fill(page, "clip_dataset_dir", str(DATA_DIR))
    choose(page, "clip_dataset", "fashion_mnist_train")  # listed from dataset_info.json once the dir is set
    choose(page, "clip_eval_dataset", "fashion_mnist_test")
    page.locator("#clip_preview_data_btn").click()
    expect(page.locator("#clip_gallery img")).to_have_count(8)
    expect(page.locator("#clip_gallery")).to_contain_text("ankle boot")

    # only the chosen method's options are shown
    expect(page.locator("#clip_abs")).to_be_visible()
    expect(page.locator("#clip_prompt_length")).to_be_hidden()
    choose(page, "clip_method", "prompt")
    expect(page.locator("#clip_prompt_length")).to_be_visible()
    expect(page.locator("#clip_abs")).to_be_hidden()
    choose(page, "clip_method", "full")

    # invalid input: a clear message and nothing launched
    fill(page, "clip_output_dir", str(output_dir))
    fill(page, "clip_learning_rate", "abc")
    page.locator("#clip_start_btn").click()
    expect(page.locator("#clip_output")).to_contain_text("Learning rate must be a number, got abc.")
    assert not output_dir.exists()

    fill(page, "clip_learning_rate", "3e-4")
    fill(page, "clip_num_train_epochs", "4")
    fill(page, "clip_logging_steps", "2")
    extra = {"train_transforms": ["random_flip", "normalize"], "save_strategy": "no", "dataloader_num_workers": 0}
    fill(page, "clip_extra_args", json.dumps(extra))
    page.locator("#clip_preview_btn").click()
    expect(page.locator("#clip_output")).to_contain_text(f"output_dir: {output_dir}")
    expect(page.locator("#clip_output")).to_contain_text(
        re.compile(r"llamafactory-cli train llamaboard_cache/clip/\w+\.yaml")
    )

    page.locator("#clip_start_btn").click()
    expect(page.locator("#clip_progress")).to_be_visible()
    expect(page.locator("#clip_output")).to_contain_text(re.compile("Finished|Failed"), timeout=300_000)
    expect(page.locator("#clip_output")).to_contain_text(f"Finished. The model is saved in {output_dir}")
    expect(page.locator("#clip_metrics")).to_contain_text("eval_accuracy")
    expect(page.locator("#clip_progress input[type=number]")).to_have_value("100")
    results = json.loads((output_dir / "all_results.json").read_text())
    shown = page.locator("#clip_metrics").inner_text()
    assert f"{results['eval_accuracy']:.4g}" in shown
    assert (output_dir / "trainer_log.jsonl").is_file() and (output_dir / "model.safetensors").is_file()
    expect(page.locator("#clip_progress")).to_contain_text(re.compile(r"\d+/\d+: \d+:\d\d:\d\d < "))  # steps, times
    expect(page.locator("#clip_loss canvas")).to_have_count(1)  # the loss curve is drawn (its data: test_webui.py)

    # LLaMA-Factory's language switch relabels the CLIP tab too, and back
    language = page.get_by_role("listbox", name=re.compile("^(Language|语言)$"))
    language.click()
    page.get_by_role("option", name="zh", exact=True).click()
    expect(page.locator("#clip_start_btn")).to_have_text("开始")
    expect(page.locator("#clip_learning_rate")).to_contain_text("学习率")
    page.get_by_role("listbox", name=re.compile("^(Language|语言)$")).click()
    page.get_by_role("option", name="en", exact=True).click()
    expect(page.locator("#clip_start_btn")).to_have_text("Start")

    # "Try it": the finished run scores an uploaded image; a file that is not an image gets a message
    page.locator("#clip_try").get_by_text("Try it", exact=True).click()
    run_box = page.locator("#clip_try_run input").first
    run_box.fill(str(output_dir))
    run_box.press("Enter")
    image = sorted((DATA_DIR / "fashion_mnist" / "test" / "bag").glob("*.png"))[0]
    page.locator("#clip_try_images input[type=file]").set_input_files(str(image))
    page.locator("#clip_try_btn").click()
    expect(page.locator("#clip_try_output")).to_contain_text(image.name, timeout=120_000)  # the table of images
    classes = re.compile(
        "|".join(re.escape(c) for c in (DATA_DIR / "fashion_mnist" / "classnames.txt").read_text().split("\n") if c)
    )
    expect(page.locator("#clip_try_label")).to_contain_text(classes)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.locator("#clip_try_images input[type=file]").set_input_files(str(bad))
    page.locator("#clip_try_btn").click()
    expect(page.locator("#clip_try_output")).to_contain_text("not an image (Pillow cannot read its header)")

    shot = tmp_path / "clip_tab.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copy(shot, Path(ROOT, os.environ[SCREENSHOT_ENV]))

    # the same output dir again with other arguments is another run: refused
    fill(page, "clip_num_train_epochs", "5")
    page.locator("#clip_start_btn").click()
    expect(page.locator("#clip_output")).to_contain_text("already holds a different run")
    expect(page.locator("#clip_metrics")).to_contain_text("eval_accuracy")  # the last run's result stays
