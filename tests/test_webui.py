"""The CLIP tab's logic without a browser: form -> arguments, validation, locales, the runner and the hook."""

import json
import re
import subprocess
import sys
import time

import psutil
import pytest
from conftest import DATA_DIR, ROOT, TINY_CLIP

from llamafactory.clip_finetune.webui.locales import CLIP_LOCALES, register_locales
from llamafactory.clip_finetune.webui.options import (
    DEFAULTS,
    FIELDS,
    FormError,
    build_args,
    form_from_file,
    list_datasets,
    save_form,
    validate,
)
from llamafactory.clip_finetune.webui.runner import ClipRunner, stop_process_tree


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """The tab writes into LLaMA Board's folders under the working directory: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)


def form(tmp_path, **changes):
    values = dict(
        DEFAULTS,
        clip_model=str(TINY_CLIP),
        clip_dataset_dir=str(DATA_DIR),
        clip_dataset=["fashion_mnist_train"],
        clip_eval_dataset="fashion_mnist_test",
        clip_output_dir=str(tmp_path / "run"),
    )
    values.update(changes)
    return values


def test_datasets_listed_are_the_ones_the_task_can_read(tmp_path):
    assert list_datasets(str(DATA_DIR), "classification") == [
        "fashion_mnist_train",
        "fashion_mnist_val",
        "fashion_mnist_test",
    ]
    assert "emoji_captions_test" in list_datasets(str(DATA_DIR), "image_to_text")
    broken = tmp_path / "data"
    broken.mkdir()
    (broken / "dataset_info.json").write_text(json.dumps({"gone": {"file_name": "missing"}, "bad": {"x": 1}}))
    assert list_datasets(str(broken), "classification") == []
    assert list_datasets(str(tmp_path / "nowhere"), "classification") == []


@pytest.mark.parametrize(
    "method, present, absent",
    [
        ("full", {"abs": False, "abs_keep": 5}, ["prompt_length", "lora_rank", "tip_alpha"]),
        ("bias", {"abs": False, "bias_terms": ["mlp"]}, ["prompt_length", "adapter_ratio"]),
        ("prompt", {"prompt_length": 5, "prompt_deep": False}, ["abs", "lora_rank"]),
        ("adapter", {"adapter_reduction": 4, "adapter_target": "vision"}, ["abs", "prompt_length"]),
        ("tip", {"tip_alpha": 1.0, "tip_finetune": False}, ["abs", "lora_rank"]),
        ("lora", {"lora_rank": 8, "lora_target": "q_proj,v_proj"}, ["abs", "tip_alpha"]),
        (
            "coop",
            {"coop_ctx_init": "a photo of a", "coop_class_token_position": "end", "coop_kg_weight": 0.0},
            ["coop_n_ctx", "abs", "lora_rank"],  # a blank context length: the phrase's
        ),
        ("clip_lora", {"lora_rank": 8, "lp_ft": False}, ["abs", "probe_type"]),  # reads lora's keys
        ("linear_probe", {"probe_type": "lpp", "probe_epochs": 300}, ["probe_c", "lp_ft", "abs", "lora_rank"]),
    ],
)
def test_only_the_chosen_methods_options_reach_the_arguments(tmp_path, method, present, absent):
    args = build_args(form(tmp_path, clip_method=method, clip_bias_terms="mlp"))
    assert args["finetuning_type"] == method
    assert {key: args[key] for key in present} == present
    assert not set(absent) & set(args)
    assert args["learning_rate"] == 2e-5 and args["num_train_epochs"] == 10.0 and args["num_shots"] == 16
    validate(args, "en")  # every method's defaults pass the stage's own checks


def test_a_search_given_in_the_extra_arguments_reaches_the_stage_checked(tmp_path):
    search = {"space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}, "n_trials": 4}
    extra = json.dumps({"val_dataset": "fashion_mnist_val", "hp_search": search})
    args = build_args(form(tmp_path, clip_extra_args=extra))
    assert args["hp_search"] == search
    validate(args, "en")
    bad = json.dumps({"val_dataset": "fashion_mnist_test", "hp_search": search})
    with pytest.raises(FormError, match="would choose on the test split"):
        validate(build_args(form(tmp_path, clip_extra_args=bad)), "en")


def test_form_details_precision_shots_extra_and_dassl_config(tmp_path):
    args = build_args(form(tmp_path, clip_compute_type="bf16", clip_num_shots=0, clip_extra_args='{"seed": 3}'))
    assert args["bf16"] is True and "num_shots" not in args and args["seed"] == 3
    assert "lora_alpha" not in build_args(form(tmp_path, clip_method="lora", clip_lora_alpha=0))  # stage: 2 x rank
    assert build_args(form(tmp_path, clip_method="lora", clip_lora_alpha=32))["lora_alpha"] == 32
    i2t = build_args(form(tmp_path, clip_task="image_to_text", clip_dataset=["emoji_captions_train"]))
    assert "num_shots" not in i2t  # shots are per class

    # with a Dassl config only the fields changed from the tab's defaults are sent (a sent key beats the config's)
    config = "vit_b16,examples/clip/dassl/abs.yaml"
    dassl = build_args(form(tmp_path, clip_config=config, clip_learning_rate="1e-3", clip_dataset=[]))
    assert dassl["clip_config"] == config and dassl["learning_rate"] == 1e-3 and dassl["clip_task"] == "classification"
    unchanged = {"abs", "abs_keep", "logging_steps", "num_train_epochs", "finetuning_type", "dataset", "num_shots"}
    assert not unchanged & set(dassl)
    assert dassl["model_name_or_path"] == str(TINY_CLIP)  # changed from the preset: sent


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"clip_learning_rate": "abc"}, "Learning rate must be a number, got `abc`."),
        ({"clip_learning_rate": "-1e-3"}, "Learning rate must be a number, got `-1e-3`."),
        ({"clip_num_train_epochs": "nan"}, "Epochs must be a number, got `nan`."),
        ({"clip_method": "prefix"}, "Method: `prefix` is not one of"),
        ({"clip_num_train_epochs": ""}, "Epochs must be a number, got ``."),
        ({"clip_dataset_dir": "/nonexistent"}, "Data dir `/nonexistent` has no dataset_info.json (relative paths"),
        ({"clip_train_batch_size": None}, "Train batch size is empty: give a value."),
        ({"clip_eval_batch_size": float("nan")}, "is not a usable number"),
        ({"clip_warmup_steps": float("inf")}, "is not a usable number"),
        ({"clip_logging_steps": 10**30}, "is not a usable number"),
        ({"clip_learning_rate": "1e400"}, "Learning rate must be a number, got `1e400`."),
        ({"clip_extra_args": "[" * 100000 + "]" * 100000}, "Extra arguments: not usable JSON (RecursionError"),
        ({"clip_extra_args": '{"seed": ' + "9" * 5000 + "}"}, "Extra arguments: not usable JSON (ValueError"),
        ({"clip_dataset": []}, "Choose a train dataset."),
        ({"clip_eval_dataset": None}, "Choose a test dataset."),
        ({"clip_extra_args": "{seed: 1}"}, "Extra arguments: not valid JSON"),
        ({"clip_extra_args": "[1]"}, "Extra arguments: give a JSON object"),
    ],
)
def test_bad_fields_get_a_message_naming_them(tmp_path, changes, message):
    with pytest.raises(FormError, match=re.escape(message)):
        build_args(form(tmp_path, **changes))


def test_messages_follow_the_language(tmp_path):
    with pytest.raises(FormError, match="学习率 必须是数字"):
        build_args(form(tmp_path, clip_learning_rate="x"), "zh")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"clip_dataset": ["no_such_data"]}, "dataset `no_such_data` is not in"),
        ({"clip_eval_dataset": "emoji_captions_test"}, "is a image_to_text dataset, but clip_task is classification"),
        ({"clip_extra_args": '{"learning_rat": 1}'}, "learning_rat.*learning_rate"),
        ({"clip_method": "tip", "clip_tip_search_best": True}, "tip_search_best searches on the validation split"),
        ({"clip_method": "lora", "clip_lora_rank": -4}, "lora_rank must be at least 1"),
        ({"clip_method": "tip", "clip_tip_augment_epoch": 0}, "tip_augment_epoch must be at least 1"),
        ({"clip_method": "prompt", "clip_prompt_length": 0}, "prompt_length must be at least 1"),
        ({"clip_method": "adapter", "clip_adapter_reduction": 0}, "adapter_reduction must be at least 1"),
        ({"clip_extra_args": '{"learning_rate": "abc"}'}, "learning_rate must be a float, got 'abc'"),
        ({"clip_extra_args": '{"seed": [1, 2]}'}, "seed must be an integer"),
    ],
)
def test_validation_runs_the_stages_checks_before_launching(tmp_path, changes, message):
    args = build_args(form(tmp_path, **changes))
    with pytest.raises(FormError, match=message):
        validate(args, "en")


def test_a_dassl_config_form_validates_with_the_merged_arguments(tmp_path, monkeypatch):
    """Unchanged fields (here the data dir) are not sent with a config: validation reads the merged arguments."""
    monkeypatch.chdir(ROOT)
    size = '{"image_size": 32}'  # vit_b16's INPUT.SIZE is 224; the tiny checkpoint's 32
    args = build_args(
        form(
            tmp_path, clip_config="vit_b16,examples/clip/dassl/abs.yaml", clip_dataset_dir="data", clip_extra_args=size
        )
    )
    assert "dataset_dir" not in args
    validate(args, "en")
    with pytest.raises(FormError, match="image_size: 224 differs from the 32px"):
        validate(build_args(form(tmp_path, clip_config="vit_b16", clip_dataset_dir="data")), "en")
    wrong = build_args(
        form(tmp_path, clip_config="vit_b16", clip_dataset_dir="data", clip_task="image_to_text", clip_extra_args=size)
    )
    with pytest.raises(FormError, match="is a classification dataset, but clip_task is image_to_text"):
        validate(wrong, "en")


def test_an_output_dir_holding_another_run_is_refused(tmp_path):
    args = build_args(form(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    for trace in ("training_args.yaml", "webui_process.log", "running_log.txt", "trainer_log.jsonl"):
        (run / trace).write_text("a launch that stopped before saving anything\n")
    validate(args, "en")  # nothing of a run to protect: a new start (or the same one again) may use it
    (run / "model.safetensors").write_bytes(b"x")
    with pytest.raises(FormError, match="already holds a different run"):
        validate(args, "en")


def test_saved_form_loads_back_and_unknown_fields_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = form(tmp_path, clip_method="lora", clip_lora_rank=4)
    assert save_form(values, "args.yaml", "en") == "llamaboard_config/clip/args.yaml"
    assert form_from_file("args.yaml", "en") == {name: values[name] for name in FIELDS}
    folder = tmp_path / "llamaboard_config" / "clip"
    (folder / "bad.yaml").write_text("clip_lora_rnk: 4\n")
    with pytest.raises(FormError, match=r"unknown field\(s\) \['clip_lora_rnk'\]"):
        form_from_file("bad.yaml", "en")
    with pytest.raises(FormError, match="does not exist"):
        form_from_file("none.yaml", "en")
    (folder / "broken.yaml").write_text("clip_task: [\n")
    with pytest.raises(FormError, match="broken.yaml"):
        form_from_file("broken.yaml", "en")


@pytest.mark.parametrize("name", ["../x.yaml", "/etc/passwd", "sub/a.yaml", "a.txt", ".bashrc", "", "..", "a\\b.yaml"])
def test_save_and_load_stay_in_llama_boards_config_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    for action in (lambda: save_form(form(tmp_path), name, "en"), lambda: form_from_file(name, "en")):
        with pytest.raises(
            FormError, match=r"give a file name ending in .yaml, without folders.*llamaboard_config/clip"
        ):
            action()
    assert not any(tmp_path.rglob("*.yaml")) and not (tmp_path / ".bashrc").exists()


def test_locales_cover_every_language_of_llama_board_without_touching_its_entries():
    from llamafactory.webui.locales import LOCALES

    before = {name: entry for name, entry in LOCALES.items() if not name.startswith("clip_")}
    register_locales(LOCALES)
    register_locales(LOCALES)  # a second UI in the same process
    languages = set(LOCALES["output_dir"])
    for name in CLIP_LOCALES:
        assert set(LOCALES[name]) == languages, name
        assert LOCALES[name]["zh"] != LOCALES[name]["en"] or name in ("clip_tip_alpha", "clip_tip_beta"), name
        assert LOCALES[name]["ru"] == LOCALES[name]["en"]  # English where we have no translation
    assert all(LOCALES[name] is entry for name, entry in before.items())
    with pytest.raises(RuntimeError, match="already has an element named `clip_model`"):
        register_locales({"clip_model": {"en": {"label": "someone else's"}}})


def test_every_tab_element_is_registered_and_labelled(tmp_path, monkeypatch):
    import gradio as gr
    import llamafactory.webui.interface as interface
    from llamafactory.webui.engine import Engine

    from llamafactory.clip_finetune.webui.components import create_clip_tab

    monkeypatch.chdir(tmp_path)
    assert interface.create_footer.__clip_tab_original__ is not None  # the hook patched LLaMA Board on import
    config = interface.create_ui().get_config_file()
    tabs = [c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"]
    assert tabs.index("CLIP") == tabs.index("Export") + 1  # built right after the last tab, in the same group

    engine = Engine()
    with gr.Blocks():
        engine.manager.add_elems("top", {"lang": gr.Dropdown(["en", "zh"])})
        elems = create_clip_tab(engine)
    engine.manager.add_elems("clip", elems)
    assert set(FIELDS) <= set(elems)
    unlabelled = [name for name in elems if name not in CLIP_LOCALES and name not in ("clip_output", "clip_metrics")]
    assert unlabelled == []
    updates = engine.change_lang("zh")  # LLaMA Board's own language switch
    assert updates[elems["clip_start_btn"]].value == "开始"
    assert updates[elems["clip_learning_rate"]].label == "学习率"


def test_stop_process_tree_leaves_no_descendant():
    sleep = "import time; time.sleep(600)"
    code = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {sleep!r}]); {sleep}"
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while not psutil.Process(parent.pid).children() and time.time() < deadline:
        time.sleep(0.1)
    child = psutil.Process(parent.pid).children()[0]
    stop_process_tree(parent.pid, grace_s=5)
    assert parent.wait(timeout=10) is not None
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_runner_trains_and_reports_metrics_then_aborts_a_long_run(tmp_path):
    args = build_args(
        form(
            tmp_path, clip_num_train_epochs="2", clip_extra_args='{"save_strategy": "no", "dataloader_num_workers": 0}'
        )
    )
    runner = ClipRunner()
    refused = list(runner.launch(args, "en", busy=True))  # LLaMA Board's own runner is training
    assert [status.message for status in refused] == ["A run is already in progress."]
    assert not (tmp_path / "run").exists()
    statuses = list(runner.launch(args, "en"))
    final = statuses[-1]
    assert final.done and final.percentage == 100.0, final.message
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert final.metrics["eval_accuracy"] == results["eval_accuracy"]
    assert final.losses and all(step > 0 for step, _ in final.losses)
    assert (tmp_path / "run" / "running_log.txt").is_file()  # LLAMABOARD_ENABLED / LLAMABOARD_WORKDIR reached it

    long = build_args(
        form(
            tmp_path,
            clip_num_train_epochs="1000",
            clip_output_dir=str(tmp_path / "long"),
            clip_extra_args='{"save_strategy": "no", "dataloader_num_workers": 1}',
        )
    )
    statuses = runner.launch(long, "en")
    for status in statuses:
        if status.losses:  # training is under way, loader workers included
            break
    reloaded = runner.reattach("zh")  # a page opened meanwhile follows the same run
    assert next(reloaded).percentage is not None
    process = psutil.Process(runner.process.pid)
    tree = process.children(recursive=True) + [process]
    runner.abort()
    final = list(statuses)[-1]
    assert final.message == "Aborted." and final.done
    assert list(reloaded)[-1].message == "已中断。"
    assert list(runner.reattach("en")) == []  # nothing runs: nothing to follow
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)


@pytest.mark.slow
@pytest.mark.parametrize("torchrun", [False, True], ids=["direct", "torchrun"])
def test_an_output_dir_that_looks_like_flags_is_only_a_folder(tmp_path, monkeypatch, torchrun):
    """LLaMA-Factory's torchrun launcher joins argv with spaces and splits it again: the launched path is a copy of
    the arguments under llamaboard_cache with a name of safe characters, so the output dir never reaches argv."""
    monkeypatch.chdir(tmp_path)
    if torchrun:
        monkeypatch.setenv("FORCE_TORCHRUN", "1")
        monkeypatch.setenv("NPROC_PER_NODE", "1")
    out = tmp_path / "x --stage sft --trust_remote_code true"
    extra = '{"save_strategy": "no", "dataloader_num_workers": 0, "num_shots": 1}'
    args = build_args(form(tmp_path, clip_output_dir=str(out), clip_num_train_epochs="1", clip_extra_args=extra))
    validate(args, "en")
    statuses = list(ClipRunner().launch(args, "en"))
    assert statuses[-1].percentage == 100.0, statuses[-1].message
    assert (out / "all_results.json").is_file() and (out / "training_args.yaml").is_file()
    started = statuses[0].message
    assert "llamaboard_cache/clip/" in started and "--stage" not in started


def test_an_abort_clicked_while_start_validates_cancels_the_launch(tmp_path):
    runner = ClipRunner()
    runner.abort()  # nothing runs yet: Start is still validating
    statuses = list(runner.launch(build_args(form(tmp_path)), "en"))
    assert [s.message for s in statuses] == ["Aborted."] and runner.process is None
    assert not (tmp_path / "run").exists()


def test_a_reloaded_page_gets_the_running_jobs_form_and_an_empty_data_dir_is_explained(tmp_path):
    from llamafactory.clip_finetune.webui.components.clip_tab import _preview_data, _why_no_datasets

    assert "has no dataset_info.json" in _why_no_datasets("en", str(tmp_path), "classification")
    assert str(tmp_path) in _why_no_datasets("en", str(tmp_path), "classification")
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"caps": {"file_name": "c.jsonl", "task": "image_to_text"}})
    )
    (tmp_path / "c.jsonl").write_text('{"image": "bad.png", "captions": "x"}\n')
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert "none readable as a classification dataset" in _why_no_datasets("en", str(tmp_path), "classification")
    gallery, message = _preview_data("en", str(tmp_path), ["caps"])
    assert "Cannot show the data: Cannot read image" in message and "bad.png" in message

    values = form(tmp_path, clip_num_train_epochs="1000", clip_learning_rate="3e-4")
    extra = '{"save_strategy": "no", "dataloader_num_workers": 0}'
    values["clip_extra_args"] = extra
    runner = ClipRunner()
    statuses = runner.launch(build_args(values), "en", form=values)
    next(statuses)
    try:
        assert runner.running and runner.form["clip_learning_rate"] == "3e-4"
    finally:
        runner.abort()
        list(statuses)


def test_the_checkpoint_list_offers_every_familys_short_name(tmp_path):
    """The tab's model list holds the families' short names, and each reaches the run as its hub checkpoint."""
    from llamafactory.clip_finetune.hparams import ClipModelArguments
    from llamafactory.clip_finetune.hparams.model_args import PRESETS as SHORT_NAMES
    from llamafactory.clip_finetune.webui.options import PRESETS

    assert {
        "siglip2-base-patch16-224",
        "siglip-base-patch16-224",
        "metaclip-2",
        "chinese-clip-vit-base-patch16",
    } <= set(PRESETS)
    for name, hub in SHORT_NAMES.items():
        args = build_args(form(tmp_path, clip_model=name))
        assert args["model_name_or_path"] == name
        assert ClipModelArguments(model_name_or_path=args["model_name_or_path"]).model_name_or_path == hub


@pytest.mark.slow
def test_try_it_scores_images_with_a_finished_run_as_its_predictions_do(tmp_path):
    """The "Try it" panel loads a finished run once (its arguments file says its dataset) and gives each image the
    classes and scores the run's own predictions give; bad inputs get a message, not an error."""
    import yaml
    from conftest import base_args
    from llamafactory.train.tuner import run_exp

    from llamafactory.clip_finetune.webui import try_it

    run = tmp_path / "saves" / "tiny" / "run"
    run_exp(base_args(run, do_predict=True, predict_dataset="fashion_mnist_test"))
    (run / "training_args.yaml").write_text(
        yaml.safe_dump({"clip_task": "classification", "dataset": "fashion_mnist_train", "dataset_dir": str(DATA_DIR)})
    )
    assert try_it.finished_runs(str(tmp_path / "saves")) == [str(run)]
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()][:3]
    scores, table = try_it.try_run(str(run), [r["image"] for r in rows], "", "en")
    expected = {t["class"]: t["score"] for t in rows[0]["top_k"][:5]}
    assert scores.keys() == expected.keys() and list(scores.values()) == pytest.approx(
        list(expected.values()), abs=1e-5
    )
    assert table.count("\n") == 4 and rows[2]["top_k"][0]["class"] in table.splitlines()[-1]
    loaded = try_it._loaded[str(run)][0]
    try_it.try_run(str(run), [rows[0]["image"]], "", "en")
    assert try_it._loaded[str(run)][0] is loaded  # loaded once, kept

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    scores, message = try_it.try_run(str(run), [str(text)], "", "en")
    assert scores is None and message == "image 0: not an image (Pillow cannot read its header)."
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(21 * 2**20)
    assert try_it.try_run(str(run), [str(big)], "", "en") == (None, "big.png is larger than 20 MiB.")
    assert try_it.try_run(str(run), [], "", "en") == (None, "Upload one or more images.")
    assert "holds no finished run" in try_it.try_run(str(tmp_path), [str(text)], "", "en")[1]
