"""The CLIP tab's layout and events; what the fields mean lives in ``webui.options``."""

import os
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd
from gradio.context import Context
from llamafactory.webui.common import load_config
from PIL import Image

from ...data.dataset_info import get_dataset_attr, read_dataset_info
from ...data.readers import read_samples
from ...data.transforms import decode
from ..locales import CLIP_LOCALES, alert
from ..options import (
    BLANK_NUMBERS,
    CHOICES,
    DEFAULTS,
    FIELDS,
    GROUPS,
    METHOD_GROUPS,
    METHODS,
    PRECISIONS,
    PRESETS,
    SCHEDULERS,
    TASKS,
    FormError,
    build_args,
    form_from_file,
    list_datasets,
    preview,
    save_form,
    validate,
)
from ..runner import ClipRunner, Status
from ..try_it import TOP_K, finished_runs, try_run


if TYPE_CHECKING:
    from gradio.components import Component

GALLERY_SIZE = 8


def _kw(name: str) -> dict[str, Any]:
    """The element's id (stable for tests and styling) and its English text; the language switch replaces the text."""
    return {"elem_id": name, **(CLIP_LOCALES[name]["en"] if name in CLIP_LOCALES else {})}


def _images(samples: Any) -> list[tuple[Any, str]]:
    """A few samples with their class name or first caption; one per class first, for classification."""
    if hasattr(samples, "labels"):
        first = {}
        for index, label in enumerate(samples.labels):
            first.setdefault(label, index)
        picks = (list(first.values()) + list(range(len(samples.labels))))[:GALLERY_SIZE]
        names = [samples.classnames[samples.labels[i]] for i in picks]
    else:
        picks = list(range(min(GALLERY_SIZE, len(samples.images))))
        names = [samples.captions[i][0] for i in picks]
    shown = []
    for index, name in zip(picks, names, strict=True):
        # decoded here, as training decodes it (errors name the file): Gradio serves no files outside its folders
        pixels = decode(samples.images[index], samples.origins[index])
        shown.append((Image.fromarray(pixels.permute(1, 2, 0).numpy()), name))
    return shown


def _dataset_choices(lang: str, dataset_dir: str, task: str):
    names = list_datasets(dataset_dir or "data", task)
    return (
        gr.update(choices=names, value=[]),
        gr.update(choices=names, value=None),
        gr.update(choices=names, value=None),
        "" if names else _why_no_datasets(lang, dataset_dir or "data", task),
    )


def _why_no_datasets(lang: str, dataset_dir: str, task: str) -> str:
    """Where the tab looked (resolved), and why it listed nothing."""
    where = os.path.abspath(dataset_dir)
    try:
        info = read_dataset_info(dataset_dir)
    except ValueError:
        return alert("no_dataset_dir", lang, where)
    why = f"{len(info)} entries, none readable as a {task} dataset" if info else "dataset_info.json is empty"
    return alert("no_datasets_listed", lang, where, why)


def _preview_data(lang: str, dataset_dir: str, names: list[str]):
    if not names:
        return gr.update(visible=False), alert("no_dataset", lang)
    try:
        attr = get_dataset_attr(names[0], dataset_dir, read_dataset_info(dataset_dir))
        return gr.update(value=_images(read_samples(attr)), visible=True), ""
    except (ValueError, OSError) as err:  # a bad entry or image: named, never a bare "Error"
        return gr.update(visible=False), alert("bad_image", lang, err)


def _show(status: Status, lang: str):
    progress = gr.update()
    if status.percentage is not None:
        progress = gr.update(value=status.percentage, visible=True, label=status.progress_label or None)
    losses = pd.DataFrame(status.losses, columns=["step", "loss"])
    metrics = ""
    if status.metrics:
        rows = "\n".join(f"| {key} | {value:.4g} |" for key, value in status.metrics.items())
        metrics = f"**{alert('metrics', lang)}**\n\n| metric | value |\n| --- | --- |\n{rows}"
    return status.message, progress, gr.update(value=losses), metrics


def create_clip_tab(engine: Any) -> dict[str, "Component"]:
    runner = ClipRunner()
    lang = engine.manager.get_elem_by_id("top.lang")
    d = DEFAULTS
    elems: dict[str, Component] = {"clip_intro": gr.Markdown(**_kw("clip_intro"))}
    with gr.Row():
        elems["clip_model"] = gr.Dropdown(
            PRESETS, value=d["clip_model"], allow_custom_value=True, scale=3, **_kw("clip_model")
        )
        elems["clip_task"] = gr.Dropdown(TASKS, value=d["clip_task"], scale=1, **_kw("clip_task"))
    names = list_datasets(d["clip_dataset_dir"], d["clip_task"])
    with gr.Row():
        elems["clip_dataset_dir"] = gr.Textbox(value=d["clip_dataset_dir"], scale=1, **_kw("clip_dataset_dir"))
        elems["clip_dataset"] = gr.Dropdown(names, multiselect=True, scale=2, **_kw("clip_dataset"))
        elems["clip_val_dataset"] = gr.Dropdown(names, scale=1, **_kw("clip_val_dataset"))
        elems["clip_eval_dataset"] = gr.Dropdown(names, scale=1, **_kw("clip_eval_dataset"))
        elems["clip_num_shots"] = gr.Number(
            value=d["clip_num_shots"], precision=0, minimum=0, scale=1, **_kw("clip_num_shots")
        )
        elems["clip_preview_data_btn"] = gr.Button(scale=1, **_kw("clip_preview_data_btn"))
    elems["clip_gallery"] = gr.Gallery(
        columns=GALLERY_SIZE, rows=1, height=180, object_fit="contain", visible=False, **_kw("clip_gallery")
    )
    with gr.Row():
        elems["clip_method"] = gr.Dropdown(METHODS, value=d["clip_method"], scale=1, **_kw("clip_method"))
        elems["clip_config"] = gr.Textbox(value=d["clip_config"], scale=3, **_kw("clip_config"))
    groups: dict[str, gr.Row] = {}
    for group, keys in GROUPS.items():
        with gr.Row(visible=group in METHOD_GROUPS[d["clip_method"]]) as groups[group]:
            for key in keys:
                name, value = f"clip_{key}", d[f"clip_{key}"]
                if isinstance(value, bool):
                    elems[name] = gr.Checkbox(value=value, **_kw(name))
                elif name in CHOICES:
                    elems[name] = gr.Dropdown(CHOICES[name], value=value, **_kw(name))
                elif name in BLANK_NUMBERS:
                    elems[name] = gr.Number(value=value, precision=BLANK_NUMBERS[name], **_kw(name))
                elif isinstance(value, (int, float)):
                    elems[name] = gr.Number(value=value, precision=0 if isinstance(value, int) else None, **_kw(name))
                else:
                    elems[name] = gr.Textbox(value=value, **_kw(name))
    with gr.Row():
        elems["clip_train_batch_size"] = gr.Number(
            value=d["clip_train_batch_size"], precision=0, minimum=1, **_kw("clip_train_batch_size")
        )
        elems["clip_eval_batch_size"] = gr.Number(
            value=d["clip_eval_batch_size"], precision=0, minimum=1, **_kw("clip_eval_batch_size")
        )
        elems["clip_learning_rate"] = gr.Textbox(value=d["clip_learning_rate"], **_kw("clip_learning_rate"))
        elems["clip_num_train_epochs"] = gr.Textbox(value=d["clip_num_train_epochs"], **_kw("clip_num_train_epochs"))
        elems["clip_lr_scheduler_type"] = gr.Dropdown(
            SCHEDULERS, value=d["clip_lr_scheduler_type"], **_kw("clip_lr_scheduler_type")
        )
        elems["clip_warmup_steps"] = gr.Number(
            value=d["clip_warmup_steps"], precision=0, minimum=0, **_kw("clip_warmup_steps")
        )
        elems["clip_compute_type"] = gr.Dropdown(PRECISIONS, value=d["clip_compute_type"], **_kw("clip_compute_type"))
        elems["clip_logging_steps"] = gr.Number(
            value=d["clip_logging_steps"], precision=0, minimum=1, **_kw("clip_logging_steps")
        )
    with gr.Row():
        elems["clip_output_dir"] = gr.Textbox(value=d["clip_output_dir"], scale=2, **_kw("clip_output_dir"))
        elems["clip_extra_args"] = gr.Textbox(value=d["clip_extra_args"], scale=2, **_kw("clip_extra_args"))
        elems["clip_config_path"] = gr.Textbox(value="clip_webui_args.yaml", scale=1, **_kw("clip_config_path"))
    with gr.Row():
        for button in ("clip_preview_btn", "clip_save_btn", "clip_load_btn"):
            elems[button] = gr.Button(**_kw(button))
        elems["clip_start_btn"] = gr.Button(variant="primary", **_kw("clip_start_btn"))
        elems["clip_stop_btn"] = gr.Button(variant="stop", **_kw("clip_stop_btn"))
    with gr.Row():
        with gr.Column(scale=3):
            elems["clip_progress"] = gr.Slider(
                0, 100, value=0, interactive=False, visible=False, **_kw("clip_progress")
            )
            elems["clip_output"] = gr.Markdown(**_kw("clip_output"))
            elems["clip_metrics"] = gr.Markdown(**_kw("clip_metrics"))
        with gr.Column(scale=2):
            elems["clip_loss"] = gr.LinePlot(
                pd.DataFrame(columns=["step", "loss"]), x="step", y="loss", **_kw("clip_loss")
            )
    with gr.Accordion(open=False, **_kw("clip_try")) as elems["clip_try"]:
        with gr.Row():
            elems["clip_try_run"] = gr.Dropdown(
                finished_runs(), value=None, allow_custom_value=True, scale=2, **_kw("clip_try_run")
            )
            elems["clip_try_images"] = gr.File(
                file_count="multiple", file_types=["image"], scale=2, **_kw("clip_try_images")
            )
            elems["clip_try_captions"] = gr.Textbox(lines=3, scale=2, **_kw("clip_try_captions"))
        elems["clip_try_btn"] = gr.Button(**_kw("clip_try_btn"))
        with gr.Row():
            elems["clip_try_label"] = gr.Label(num_top_classes=TOP_K, **_kw("clip_try_label"))
            elems["clip_try_output"] = gr.Markdown(**_kw("clip_try_output"))
    form = [elems[name] for name in FIELDS]
    outputs = [elems["clip_output"], elems["clip_progress"], elems["clip_loss"], elems["clip_metrics"]]

    def read_form(values: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(FIELDS, values, strict=True))

    def on_preview(language: str, *values: Any) -> str:
        try:
            args = build_args(read_form(values), language)
            validate(args, language)
            return preview(args)
        except FormError as err:
            return str(err)

    def on_start(language: str, *values: Any):
        try:
            args = build_args(read_form(values), language)
            validate(args, language)
        except FormError as err:
            yield str(err), gr.update(), gr.update(), gr.update()  # the last run's progress and metrics stay
            return
        for status in runner.launch(args, language, busy=engine.runner.running, form=read_form(values)):
            yield _show(status, language)

    def on_save(language: str, name: str, *values: Any) -> str:
        try:
            path = save_form(read_form(values), name, language)
        except FormError as err:
            return str(err)
        return alert("saved_args", language, path)

    def on_load(language: str, name: str):
        try:
            saved = form_from_file(name, language)
        except FormError as err:
            return [str(err)] + [gr.update() for _ in FIELDS]
        # the loaded data dir and task decide which datasets can be chosen
        choices = list_datasets(
            saved.get("clip_dataset_dir") or DEFAULTS["clip_dataset_dir"],
            saved.get("clip_task") or DEFAULTS["clip_task"],
        )
        updates = []
        for name in FIELDS:
            update = {"value": saved[name]} if name in saved else {}
            if name in ("clip_dataset", "clip_val_dataset", "clip_eval_dataset"):
                update["choices"] = choices
            updates.append(gr.update(**update))
        return [alert("loaded_args", language, name)] + updates

    def on_try(language: str, run_dir: str, files: list[str] | None, captions: str):
        scores, table = try_run(run_dir, files or [], captions, language)
        return gr.update(value=scores), table

    def on_method(method: str):
        return [gr.update(visible=group in METHOD_GROUPS[method]) for group in GROUPS]

    dataset_fields = [elems["clip_dataset"], elems["clip_val_dataset"], elems["clip_eval_dataset"]]
    # `.input`: only what the user types or picks; a loaded arguments file sets the datasets itself
    for trigger in (elems["clip_dataset_dir"].input, elems["clip_task"].input):
        trigger(
            _dataset_choices,
            [lang, elems["clip_dataset_dir"], elems["clip_task"]],
            dataset_fields + [elems["clip_output"]],
            queue=False,
        )
    elems["clip_method"].change(on_method, [elems["clip_method"]], list(groups.values()), queue=False)
    elems["clip_preview_data_btn"].click(
        _preview_data,
        [lang, elems["clip_dataset_dir"], elems["clip_dataset"]],
        [elems["clip_gallery"], elems["clip_output"]],
    )
    elems["clip_preview_btn"].click(on_preview, [lang] + form, elems["clip_output"])
    elems["clip_try_run"].focus(lambda: gr.update(choices=finished_runs()), None, elems["clip_try_run"], queue=False)
    elems["clip_try_btn"].click(
        on_try,
        [lang, elems["clip_try_run"], elems["clip_try_images"], elems["clip_try_captions"]],
        [elems["clip_try_label"], elems["clip_try_output"]],
    )
    elems["clip_load_btn"].click(on_load, [lang, elems["clip_config_path"]], [elems["clip_output"]] + form)
    if not engine.demo_mode:  # like LLaMA Board: a demo Space shows the tab but runs and writes nothing
        elems["clip_save_btn"].click(on_save, [lang, elems["clip_config_path"]] + form, elems["clip_output"])
        elems["clip_start_btn"].click(on_start, [lang] + form, outputs, concurrency_limit=None)
        elems["clip_stop_btn"].click(runner.abort, queue=False)

    def on_page_load(language: str | None):
        """A page opened during a run shows the running job's settings and follows it; otherwise it says why the
        dataset lists are empty, if they are."""
        language = language or load_config().get("lang") or "en"  # LLaMA Board sets the dropdown after this
        if not runner.running:
            hint = "" if names else _why_no_datasets(language, d["clip_dataset_dir"], d["clip_task"])
            yield hint, gr.update(), gr.update(), gr.update(), *[gr.update() for _ in FIELDS]
            return
        form_now = [gr.update(value=runner.form[n]) if runner.form else gr.update() for n in FIELDS]
        for status in runner.reattach(language):
            yield *_show(status, language), *form_now
            form_now = [gr.update() for _ in FIELDS]

    Context.root_block.load(on_page_load, [lang], outputs + form, concurrency_limit=None)
    return elems
