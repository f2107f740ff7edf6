"""From the CLIP tab's fields to the stage's arguments, and the checks that run before anything is launched.

Kept free of Gradio so that the form logic is tested directly; ``components/clip_tab.py`` only lays it out.
"""

import hashlib
import json
import math
import os
import shlex
from typing import Any

import yaml

from ..data.dataset_info import get_dataset_attr, get_dataset_attrs, read_dataset_info
from ..hparams import ClipFinetuningArguments, choices
from ..hparams.model_args import PRESETS as MODEL_PRESETS
from ..methods import METHODS as METHOD_REGISTRY
from ..tasks import TASKS as TASK_REGISTRY
from .locales import CLIP_LOCALES, alert


# checkpoints offered in the tab: OpenAI CLIP's, then the other families' short names (hparams.model_args.PRESETS)
PRESETS = [
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-large-patch14",
    *MODEL_PRESETS,
]
TASKS = list(TASK_REGISTRY)
METHODS = list(METHOD_REGISTRY)
ADAPTER_TARGETS = choices(ClipFinetuningArguments, "adapter_target")
SCHEDULERS = ["cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]
PRECISIONS = ["fp32", "bf16", "fp16"]
ARGS_FILE = "training_args.yaml"  # what the tab writes into output_dir, as LLaMA Board does
# LLaMA Board's folders (llamafactory.webui.common), relative to where the web UI runs: saved forms, and the copies
# of the arguments that are launched (a path of safe characters: LLaMA-Factory's torchrun launcher joins argv with
# spaces and splits it again, so an output dir like `x --stage sft` must never appear on a command line)
CONFIG_DIR = os.path.join("llamaboard_config", "clip")
LAUNCH_DIR = os.path.join("llamaboard_cache", "clip")
MAX_NUMBER = 2**53  # larger integers lose precision as JSON numbers and are no sensible setting

# field -> stage key, for the fields every method uses
COMMON = {
    "clip_model": "model_name_or_path",
    "clip_task": "clip_task",
    "clip_dataset_dir": "dataset_dir",
    "clip_dataset": "dataset",
    "clip_val_dataset": "val_dataset",
    "clip_eval_dataset": "eval_dataset",
    "clip_num_shots": "num_shots",
    "clip_method": "finetuning_type",
    "clip_config": "clip_config",
    "clip_train_batch_size": "per_device_train_batch_size",
    "clip_eval_batch_size": "per_device_eval_batch_size",
    "clip_learning_rate": "learning_rate",
    "clip_num_train_epochs": "num_train_epochs",
    "clip_lr_scheduler_type": "lr_scheduler_type",
    "clip_warmup_steps": "warmup_steps",
    "clip_logging_steps": "logging_steps",
    "clip_output_dir": "output_dir",
}
ABS_KEYS = ["abs", "abs_keep", "abs_warmup_epochs", "abs_top"]
GROUPS = {
    "abs": ABS_KEYS,
    "bias": ["bias_terms", "bias_terms_exclude"],
    "prompt": ["prompt_length", "prompt_deep", "prompt_dropout"],
    "adapter": ["adapter_reduction", "adapter_ratio", "adapter_target"],
    "tip": [
        "tip_finetune",
        "tip_alpha",
        "tip_beta",
        "tip_augment_epoch",
        "tip_search_best",
        "tip_load_cache",
        "tip_fixed_cache",
        "tip_new_dataset",
    ],
    "lora": ["lora_rank", "lora_alpha", "lora_dropout", "lora_target"],
    "coop": ["coop_n_ctx", "coop_ctx_init", "coop_class_specific", "coop_class_token_position", "coop_kg_weight"],
    "linear_probe": ["probe_type", "probe_c", "probe_epochs", "probe_views"],
    "lp_ft": ["lp_ft"],
}
# method -> its option groups: its own group, a method's group whose keys it reads too (clip_lora: lora's), ABS's
# where ABS may run on top, LP-FT's where it may (a change of existing weights)
METHOD_GROUPS = {
    name: [
        group
        for group, keys in GROUPS.items()
        if group == name
        or (group in METHOD_REGISTRY and set(keys) <= set(method.own_keys))
        or (group == "abs" and method.selectable)
        or (group == "lp_ft" and method.weight_delta)
    ]
    for name, method in METHOD_REGISTRY.items()
}
# blank or 0 means the stage's default: field -> Number precision
BLANK_NUMBERS = {"clip_abs_warmup_epochs": None, "clip_lora_alpha": 0, "clip_coop_n_ctx": 0, "clip_probe_c": None}
LIST_KEYS = {"bias_terms", "bias_terms_exclude"}  # comma-separated in the form, lists for the stage
NUMBER_TEXT = ["clip_learning_rate", "clip_num_train_epochs"]  # free text in the form, numbers for the stage
OTHER_FIELDS = ["clip_compute_type", "clip_extra_args"]
FIELDS = list(COMMON) + [f"clip_{key}" for keys in GROUPS.values() for key in keys] + OTHER_FIELDS

DEFAULTS: dict[str, Any] = {
    "clip_model": PRESETS[0],
    "clip_task": "classification",
    "clip_dataset_dir": "data",
    "clip_dataset": [],
    "clip_val_dataset": None,
    "clip_eval_dataset": None,
    "clip_num_shots": 16,
    "clip_method": "full",
    "clip_config": "",
    "clip_abs": False,
    "clip_abs_keep": 5,
    "clip_abs_warmup_epochs": None,  # blank: the stage's default (the schedule's warm-up)
    "clip_abs_top": True,
    "clip_bias_terms": "",
    "clip_bias_terms_exclude": "",
    "clip_prompt_length": 5,
    "clip_prompt_deep": False,
    "clip_prompt_dropout": 0.0,
    "clip_adapter_reduction": 4,
    "clip_adapter_ratio": 0.2,
    "clip_adapter_target": "vision",
    "clip_tip_finetune": False,
    "clip_tip_alpha": 1.0,
    "clip_tip_beta": 1.0,
    "clip_tip_augment_epoch": 10,
    "clip_tip_search_best": False,
    "clip_tip_load_cache": False,
    "clip_tip_fixed_cache": False,
    "clip_tip_new_dataset": False,
    "clip_lora_rank": 8,
    "clip_lora_alpha": None,  # blank: the stage's default (2 x rank)
    "clip_lora_dropout": 0.0,
    "clip_lora_target": "q_proj,v_proj",
    "clip_coop_n_ctx": None,  # blank: the stage's default (16, or the phrase's length)
    "clip_coop_ctx_init": "a photo of a",
    "clip_coop_class_specific": False,
    "clip_coop_class_token_position": "end",
    "clip_coop_kg_weight": 0.0,
    "clip_probe_type": "lpp",
    "clip_probe_c": None,  # blank: searched on the validation split
    "clip_probe_epochs": 300,
    "clip_probe_views": 1,
    "clip_lp_ft": False,
    "clip_train_batch_size": 32,
    "clip_eval_batch_size": 100,
    "clip_learning_rate": "2e-5",
    "clip_num_train_epochs": "10",
    "clip_lr_scheduler_type": "cosine",
    "clip_warmup_steps": 0,
    "clip_logging_steps": 5,
    "clip_output_dir": "saves/clip/train",
    "clip_compute_type": "fp32",
    "clip_extra_args": "{}",
}


CHOICES = {
    "clip_task": TASKS,
    "clip_method": METHODS,
    "clip_lr_scheduler_type": SCHEDULERS,
    "clip_compute_type": PRECISIONS,
    "clip_adapter_target": ADAPTER_TARGETS,
    "clip_coop_class_token_position": choices(ClipFinetuningArguments, "coop_class_token_position"),
    "clip_probe_type": choices(ClipFinetuningArguments, "probe_type"),
}
CHOICES.update({f: [True, False] for f, v in DEFAULTS.items() if isinstance(v, bool)})
REQUIRED_TEXT = ["clip_model", "clip_output_dir"]
TEXT_FIELDS = REQUIRED_TEXT + [
    "clip_dataset_dir",
    "clip_config",
    "clip_learning_rate",
    "clip_num_train_epochs",
    "clip_bias_terms",
    "clip_bias_terms_exclude",
    "clip_lora_target",
    "clip_coop_ctx_init",
    "clip_extra_args",
]
NUMBER_FIELDS = [f for f, v in DEFAULTS.items() if isinstance(v, (int, float)) and not isinstance(v, bool)] + list(
    BLANK_NUMBERS
)


class FormError(ValueError):
    """A message for the user, already in their language."""


def list_datasets(dataset_dir: str, task: str) -> list[str]:
    """Entries of ``dataset_dir/dataset_info.json`` the clip stage can read for ``task`` (others are left out)."""
    try:
        info = read_dataset_info(dataset_dir)
    except ValueError:
        return []
    names = []
    for name in info:
        try:
            attr = get_dataset_attr(name, dataset_dir, info)
        except (ValueError, TypeError, AttributeError):
            continue
        if attr.task == task:
            names.append(name)
    return names


def _label(field: str, lang: str) -> str:
    entry = CLIP_LOCALES[field]
    return entry.get(lang, entry["en"])["label"]


def _number(field: str, value: Any, lang: str) -> float:
    """A positive, finite number typed as text (learning rate, epochs)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= MAX_NUMBER):
        raise FormError(alert("not_a_number", lang, _label(field, lang), value))
    return number


def _check_fields(form: dict[str, Any], lang: str) -> None:
    """Choices, texts and dataset pickers hold what their widgets can hold (a crafted request may send anything)."""
    for field, options in CHOICES.items():
        if form[field] not in options:
            raise FormError(alert("invalid", lang, f"{_label(field, lang)}: `{form[field]}` is not one of {options}"))
    for field in TEXT_FIELDS:
        if not (isinstance(form[field], str) or (form[field] is None and field not in REQUIRED_TEXT)):
            raise FormError(alert("empty_field", lang, _label(field, lang)))
        if field in REQUIRED_TEXT and not form[field].strip():
            raise FormError(alert("empty_field", lang, _label(field, lang)))
    picked = form["clip_dataset"]
    if picked is not None and not (isinstance(picked, list) and all(isinstance(n, str) for n in picked)):
        raise FormError(alert("invalid", lang, f"{_label('clip_dataset', lang)}: {picked!r}"))
    for field in ("clip_val_dataset", "clip_eval_dataset"):
        if form[field] is not None and not isinstance(form[field], str):
            raise FormError(alert("invalid", lang, f"{_label(field, lang)}: {form[field]!r}"))


def _check_numbers(form: dict[str, Any], lang: str) -> None:
    """Number fields: no blank (unless blank means the stage's default), NaN, infinity or absurd magnitude."""
    for field in NUMBER_FIELDS:
        value = form.get(field)
        if value is None or value == "":
            if field in BLANK_NUMBERS:
                continue
            raise FormError(alert("empty_field", lang, _label(field, lang)))
        usable = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not usable or not math.isfinite(value) or abs(value) > MAX_NUMBER:
            raise FormError(alert("bad_number", lang, _label(field, lang), value))


def _names(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        return ",".join(value) or None
    return value or None


def build_args(form: dict[str, Any], lang: str = "en") -> dict[str, Any]:
    """The stage arguments of a filled-in form. Raises ``FormError`` for fields that are missing or not numbers.

    With a Dassl config (``clip_config``) only the fields changed from the tab's defaults are sent: any key sent
    would override the config's own value."""
    _check_fields(form, lang)
    dataset_dir = form["clip_dataset_dir"] or "data"
    with_config = bool(_names(form["clip_config"]))
    if not os.path.isfile(os.path.join(dataset_dir, "dataset_info.json")):
        raise FormError(alert("no_dataset_dir", lang, dataset_dir))
    if not with_config and not _names(form["clip_dataset"]):
        raise FormError(alert("no_dataset", lang))
    if not with_config and not _names(form["clip_eval_dataset"]):
        raise FormError(alert("no_eval_dataset", lang))
    _check_numbers(form, lang)
    sent = [field for field in COMMON if not with_config or form[field] != DEFAULTS[field]]
    sent += ["clip_task", "clip_output_dir"]  # the task decides what the datasets are; output_dir is the tab's
    args: dict[str, Any] = {"stage": "clip", "do_train": True, "do_eval": True}
    for field, key in COMMON.items():
        value = form[field]
        if field not in sent:
            continue
        if field in NUMBER_TEXT:
            value = _number(field, value, lang)
        elif field in ("clip_dataset", "clip_val_dataset", "clip_eval_dataset", "clip_config"):
            value = _names(value)
        if value is not None:
            args[key] = value
    if args.get("num_shots") == 0 or not TASK_REGISTRY[args["clip_task"]].has_classes:
        args.pop("num_shots", None)  # 0 means every image; shots apply to tasks with classes only
    for group in METHOD_GROUPS[form["clip_method"]]:
        for key in GROUPS[group]:
            value = form[f"clip_{key}"]
            if (with_config and value == DEFAULTS[f"clip_{key}"]) or (f"clip_{key}" in BLANK_NUMBERS and not value):
                continue  # a blank (or 0) number: the stage's default
            if key in LIST_KEYS:
                value = [term.strip() for term in (value or "").split(",") if term.strip()] or None
            if value is not None:
                args[key] = value
    if form["clip_compute_type"] in ("bf16", "fp16"):
        args[form["clip_compute_type"]] = True
    args.update({"report_to": "none", "plot_loss": True})
    args.update(_extra(form["clip_extra_args"], lang))
    return args


def _extra(text: str, lang: str) -> dict[str, Any]:
    try:
        extra = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise FormError(alert("bad_extra", lang, f"not valid JSON ({err.msg} at character {err.pos})")) from None
    except (ValueError, RecursionError) as err:  # a number of thousands of digits, or nesting too deep to read
        raise FormError(
            alert("bad_extra", lang, f"not usable JSON ({type(err).__name__}: {str(err)[:120]})")
        ) from None
    if not isinstance(extra, dict):
        raise FormError(alert("bad_extra", lang, 'give a JSON object, e.g. {"seed": 0}'))
    return extra


def _read_yaml(path: str, lang: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise FormError(alert("invalid", lang, f"`{path}`: {err}")) from None


def check_output_dir(args: dict[str, Any], lang: str) -> None:
    """An output dir that holds another run's files is refused; the same arguments again (a resume) are not, and
    neither is a dir with only the traces of a launch that stopped before saving anything."""
    from ..hparams.output_dir import is_bookkeeping

    output_dir = args["output_dir"]
    if not os.path.isdir(output_dir):
        return
    if all(is_bookkeeping(name) for name in os.listdir(output_dir)):
        return
    saved = os.path.join(output_dir, ARGS_FILE)
    if os.path.isfile(saved) and _read_yaml(saved, lang) == args:
        return
    raise FormError(alert("other_run", lang, output_dir))


def validate(args: dict[str, Any], lang: str) -> None:
    """Everything a run would check first, so that the tab launches nothing that would fail at once. The stage's
    parser runs here with ``use_cpu`` so that the web UI process never claims a GPU."""
    from ..train.arguments import check_clip_args

    check_output_dir(args, lang)
    try:
        _, data_args, _, finetuning_args = check_clip_args(dict(args, use_cpu=True))  # a Dassl config merged in
        given = (data_args.dataset, data_args.val_dataset, data_args.eval_dataset)
        names = [name.strip() for value in given if value for name in value.split(",") if name.strip()]
        get_dataset_attrs(names, data_args.dataset_dir, finetuning_args.clip_task)
    except FormError:
        raise
    except Exception as err:  # anything the stage would stop on: a message in the tab, never a bare "Error"
        raise FormError(alert("invalid", lang, err)) from None


def launch_path(output_dir: str) -> str:
    """Where the launched copy of a run's arguments lives: named by the output dir's digest, so it is made of safe
    characters whatever the output dir is called."""
    digest = hashlib.sha1(os.path.abspath(output_dir).encode()).hexdigest()[:16]
    return os.path.join(LAUNCH_DIR, f"{digest}.yaml")


def command(args: dict[str, Any]) -> tuple[str, list[str]]:
    """The yaml the tab writes (into output_dir, and the launched copy) and the command it runs."""
    text = yaml.safe_dump(args, sort_keys=False, allow_unicode=True)
    return text, ["llamafactory-cli", "train", launch_path(args["output_dir"])]


def preview(args: dict[str, Any]) -> str:
    text, argv = command(args)
    return f"```yaml\n{text}```\n```bash\n{shlex.join(argv)}\n```"


def args_file(name: str, lang: str) -> str:
    """Save / Load stay in LLaMA Board's config folder: a plain ``.yaml`` file name, nothing else."""
    name = (name or "").strip()
    plain = name and os.path.basename(name) == name and name not in (".", "..") and "\\" not in name
    if not plain or not name.endswith(".yaml") or name.startswith("."):
        raise FormError(alert("bad_args_name", lang, name, CONFIG_DIR))
    return os.path.join(CONFIG_DIR, name)


def form_from_file(name: str, lang: str) -> dict[str, Any]:
    """Saved form values (``save_form``) for the fields they name; unknown names are refused."""
    path = args_file(name, lang)
    if not os.path.isfile(path):
        raise FormError(alert("no_args_file", lang, path))
    saved = _read_yaml(path, lang) or {}
    if not isinstance(saved, dict):
        raise FormError(alert("invalid", lang, f"`{path}` does not hold a mapping of fields"))
    unknown = sorted(set(saved) - set(FIELDS))
    if unknown:
        raise FormError(alert("invalid", lang, f"`{path}` has unknown field(s) {unknown}"))
    return saved


def save_form(form: dict[str, Any], name: str, lang: str) -> str:
    path = args_file(name, lang)
    try:
        os.makedirs(CONFIG_DIR, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump({name: form[name] for name in FIELDS}, f, sort_keys=False, allow_unicode=True)
    except OSError as err:
        raise FormError(alert("invalid", lang, f"`{path}`: {err}")) from None
    return path
