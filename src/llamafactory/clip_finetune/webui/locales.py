"""Labels of the CLIP tab and its messages, in English and Chinese.

LLaMA Board's language switch rebuilds every registered component from ``LOCALES[name][lang]`` for all of its
languages, so ``register_locales`` gives each CLIP element an entry for every language LLaMA-Factory has (English
where we have no translation) under a ``clip_`` name that none of LLaMA-Factory's own elements uses.
"""

from typing import Any


def _entry(en: str, zh: str, en_info: str | None = None, zh_info: str | None = None) -> dict[str, dict[str, str]]:
    en_item, zh_item = {"label": en}, {"label": zh}
    if en_info:
        en_item["info"], zh_item["info"] = en_info, zh_info or en_info
    return {"en": en_item, "zh": zh_item}


def _value(en: str, zh: str) -> dict[str, dict[str, str]]:
    return {"en": {"value": en}, "zh": {"value": zh}}


CLIP_LOCALES: dict[str, dict[str, dict[str, str]]] = {
    "clip_intro": _value(
        "**CLIP finetuning** (stage `clip`): pick a checkpoint, a dataset from `dataset_info.json` and a method. "
        "LLaMA Board's fields above the tabs (model, finetuning method, quantization, template) are for LLMs and "
        "do not apply here: this tab has its own.",
        "**CLIP 微调**（`clip` 阶段）：选择模型、`dataset_info.json` 中的数据集和微调方法。"
        "标签页上方的 LLaMA Board 字段（模型、微调方法、量化、模板）仅用于大语言模型，对本页无效：本页有自己的设置。",
    ),
    "clip_model": _entry(
        "Checkpoint", "模型", "Hub name or local path of a CLIP model.", "CLIP 模型的 Hub 名称或本地路径。"
    ),
    "clip_task": _entry("Task", "任务"),
    "clip_dataset_dir": _entry(
        "Data dir", "数据目录", "Folder holding dataset_info.json.", "包含 dataset_info.json 的目录。"
    ),
    "clip_dataset": _entry("Train dataset", "训练数据集"),
    "clip_val_dataset": _entry(
        "Validation dataset", "验证数据集", "Used by the Tip-Adapter search.", "Tip-Adapter 参数搜索使用。"
    ),
    "clip_eval_dataset": _entry("Test dataset", "测试数据集"),
    "clip_num_shots": _entry("Shots per class", "每类样本数", "0 uses every image.", "0 表示使用全部图像。"),
    "clip_preview_data_btn": _value("Preview data", "预览数据"),
    "clip_gallery": _entry("Samples", "样本"),
    "clip_method": _entry("Method", "微调方法"),
    "clip_config": _entry(
        "Dassl config",
        "Dassl 配置",
        "Optional Dassl/CoOp yaml file(s), comma-separated, or vit_b16.",
        "可选的 Dassl/CoOp yaml 文件（逗号分隔），或 vit_b16。",
    ),
    "clip_abs": _entry("Angle-Based Selection", "基于角度的层选择"),
    "clip_abs_keep": _entry("Units kept per group", "每组保留的层数"),
    "clip_abs_warmup_epochs": _entry(
        "Warm-up epochs",
        "预热轮数",
        "Before the selection; 0: the schedule's warm-up.",
        "选择之前的轮数；0 表示学习率预热的轮数。",
    ),
    "clip_abs_top": _entry("Keep the largest angles", "保留角度最大的层"),
    "clip_bias_terms": _entry(
        "Include terms",
        "包含的名称",
        "Comma-separated name substrings of trained biases.",
        "训练的偏置名称子串，逗号分隔。",
    ),
    "clip_bias_terms_exclude": _entry("Exclude terms", "排除的名称"),
    "clip_prompt_length": _entry("Prompt length", "提示长度"),
    "clip_prompt_deep": _entry("Deep prompts", "深层提示"),
    "clip_prompt_dropout": _entry("Prompt dropout", "提示 Dropout"),
    "clip_adapter_reduction": _entry("Reduction", "压缩倍数"),
    "clip_adapter_ratio": _entry("Residual ratio", "残差比例"),
    "clip_adapter_target": _entry("Adapter target", "适配器位置"),
    "clip_tip_finetune": _entry("Tip-Adapter-F (train the keys)", "Tip-Adapter-F（训练缓存键）"),
    "clip_tip_alpha": _entry("Alpha", "Alpha"),
    "clip_tip_beta": _entry("Beta", "Beta"),
    "clip_tip_augment_epoch": _entry("Augmented views", "增强视图数"),
    "clip_tip_search_best": _entry("Search alpha and beta", "搜索 alpha 和 beta"),
    "clip_tip_load_cache": _entry("Reuse a saved cache", "复用已保存的缓存"),
    "clip_tip_fixed_cache": _entry("Fixed shared cache", "固定大小的共享缓存"),
    "clip_tip_new_dataset": _entry("Add this dataset to the shared cache", "将本数据集加入共享缓存"),
    "clip_lora_rank": _entry("LoRA rank", "LoRA 秩"),
    "clip_lora_alpha": _entry("LoRA alpha", "LoRA 缩放系数", "0: twice the rank.", "0 表示秩的两倍。"),
    "clip_lora_dropout": _entry("LoRA dropout", "LoRA Dropout"),
    "clip_lora_target": _entry("LoRA modules", "LoRA 作用模块"),
    "clip_coop_n_ctx": _entry(
        "Context length", "上下文长度", "Blank: 16, or the phrase's length.", "留空：16，或初始化短语的长度。"
    ),
    "clip_coop_ctx_init": _entry("Initial phrase", "初始化短语", "Blank: random context.", "留空：随机初始化。"),
    "clip_coop_class_specific": _entry("One context per class (CSC)", "每类独立上下文（CSC）"),
    "clip_coop_class_token_position": _entry("Class name position", "类别名位置"),
    "clip_coop_kg_weight": _entry(
        "KgCoOp weight", "KgCoOp 权重", "0: plain CoOp; the paper uses 8.", "0 为原始 CoOp；论文使用 8。"
    ),
    "clip_probe_type": _entry(
        "Probe",
        "线性探针",
        "lpp: LP++; logistic: CoOp's lpclip; zero_shot: logistic started at the zero-shot classifier.",
        "lpp：LP++；logistic：CoOp 的 lpclip；zero_shot：从零样本分类器出发的 logistic。",
    ),
    "clip_probe_c": _entry(
        "Regularization C", "正则化系数 C", "Blank: searched on the validation split.", "留空：在验证集上搜索。"
    ),
    "clip_probe_epochs": _entry("LP++ epochs", "LP++ 轮数"),
    "clip_probe_views": _entry("Augmented views", "增强视图数"),
    "clip_lp_ft": _entry(
        "LP-FT (probe first)",
        "LP-FT（先线性探针）",
        "Fit the LP++ probe, then finetune from it.",
        "先拟合 LP++ 探针，再从它开始微调。",
    ),
    "clip_train_batch_size": _entry("Train batch size", "训练批大小"),
    "clip_eval_batch_size": _entry("Eval batch size", "评估批大小"),
    "clip_learning_rate": _entry("Learning rate", "学习率"),
    "clip_num_train_epochs": _entry("Epochs", "训练轮数"),
    "clip_lr_scheduler_type": _entry("LR scheduler", "学习率调节器"),
    "clip_warmup_steps": _entry("Warm-up steps", "预热步数"),
    "clip_compute_type": _entry("Precision", "计算精度"),
    "clip_logging_steps": _entry("Logging steps", "日志间隔"),
    "clip_output_dir": _entry("Output dir", "输出目录"),
    "clip_extra_args": _entry(
        "Extra arguments", "额外参数", "JSON object of further stage keys.", "其他参数，JSON 格式。"
    ),
    "clip_config_path": _entry(
        "Arguments file",
        "参数文件",
        "A .yaml name in LLaMA Board's config folder (llamaboard_config/clip).",
        "LLaMA Board 配置目录（llamaboard_config/clip）中的 .yaml 文件名。",
    ),
    "clip_preview_btn": _value("Preview command", "预览命令"),
    "clip_save_btn": _value("Save arguments", "保存参数"),
    "clip_load_btn": _value("Load arguments", "载入参数"),
    "clip_start_btn": _value("Start", "开始"),
    "clip_stop_btn": _value("Abort", "中断"),
    "clip_progress": _entry("Progress", "进度"),
    "clip_loss": _entry("Loss", "损失"),
    "clip_try": _entry("Try it", "试用"),
    "clip_try_run": _entry(
        "Finished run",
        "已完成的训练",
        "A run's output dir (listed from saves/, or typed).",
        "训练输出目录（列自 saves/，或手动输入）。",
    ),
    "clip_try_images": _entry("Images", "图片"),
    "clip_try_captions": _entry(
        "Captions", "描述文本", "image_to_text runs: one caption per line.", "图文检索任务：每行一条描述。"
    ),
    "clip_try_btn": _value("Run", "运行"),
    "clip_try_label": _entry("Top classes (first image)", "前几类（第一张图）"),
    "clip_try_output": _entry("Results", "结果"),
}

ALERTS: dict[str, dict[str, str]] = {
    "running": {"en": "A run is already in progress.", "zh": "已有训练在运行。"},
    "no_dataset_dir": {
        "en": "Data dir `{}` has no dataset_info.json (relative paths start where `llamafactory-cli webui` runs).",
        "zh": "数据目录 `{}` 中没有 dataset_info.json（相对路径从运行 `llamafactory-cli webui` 的目录算起）。",
    },
    "no_datasets_listed": {
        "en": "No dataset of this task in `{}`: {}",
        "zh": "`{}` 中没有该任务的数据集：{}",
    },
    "empty_field": {"en": "{} is empty: give a value.", "zh": "{} 为空：请填写。"},
    "bad_number": {"en": "{}: `{}` is not a usable number.", "zh": "{}：`{}` 不是可用的数字。"},
    "bad_args_name": {
        "en": "Arguments file `{}`: give a file name ending in .yaml, without folders; it lives in `{}`.",
        "zh": "参数文件 `{}`：请给出以 .yaml 结尾、不含目录的文件名；它保存在 `{}`。",
    },
    "bad_image": {"en": "Cannot show the data: {}", "zh": "无法预览数据：{}"},
    "no_dataset": {"en": "Choose a train dataset.", "zh": "请选择训练数据集。"},
    "no_eval_dataset": {"en": "Choose a test dataset.", "zh": "请选择测试数据集。"},
    "not_a_number": {"en": "{} must be a number, got `{}`.", "zh": "{} 必须是数字，当前为 `{}`。"},
    "bad_extra": {"en": "Extra arguments: {}", "zh": "额外参数：{}"},
    "other_run": {
        "en": "Output dir `{}` already holds a different run: choose another output dir.",
        "zh": "输出目录 `{}` 中已有其他训练：请更换输出目录。",
    },
    "invalid": {"en": "Invalid arguments: {}", "zh": "参数无效：{}"},
    "started": {"en": "Started: `{}`", "zh": "已启动：`{}`"},
    "aborting": {"en": "Aborting: stopping the training processes…", "zh": "正在中断：停止训练进程……"},
    "aborted": {"en": "Aborted.", "zh": "已中断。"},
    "failed": {"en": "Failed (exit code {}). Last lines of `{}`:", "zh": "失败（退出码 {}）。`{}` 的最后几行："},
    "finished": {"en": "Finished. The model is saved in `{}`.", "zh": "训练完成。模型保存在 `{}`。"},
    "saved_args": {"en": "Arguments saved to `{}`.", "zh": "参数已保存到 `{}`。"},
    "loaded_args": {"en": "Arguments loaded from `{}`.", "zh": "已从 `{}` 载入参数。"},
    "no_args_file": {"en": "Arguments file `{}` does not exist.", "zh": "参数文件 `{}` 不存在。"},
    "metrics": {"en": "Evaluation", "zh": "评估结果"},
    "try_no_run": {
        "en": "`{}` holds no finished run (no all_results.json): pick one from the list or train one first.",
        "zh": "`{}` 中没有已完成的训练（缺少 all_results.json）：请从列表中选择或先训练。",
    },
    "try_bad_run": {"en": "Cannot load the run `{}`: {}", "zh": "无法载入训练 `{}`：{}"},
    "try_no_images": {"en": "Upload one or more images.", "zh": "请上传一张或多张图片。"},
    "try_too_large": {"en": "{} is larger than {} MiB.", "zh": "{} 大于 {} MiB。"},
    "try_no_captions": {"en": "Type captions, one per line.", "zh": "请输入描述文本，每行一条。"},
}


def alert(key: str, lang: str, *values: Any) -> str:
    table = ALERTS[key]
    return table.get(lang, table["en"]).format(*values)


def register_locales(locales: dict[str, dict[str, dict[str, str]]]) -> None:
    """Add the CLIP entries to LLaMA-Factory's ``LOCALES`` for each of its languages (English as the fallback)."""
    languages = {lang for entry in locales.values() for lang in entry} | {"en", "zh"}
    for name, entry in CLIP_LOCALES.items():
        if name in locales and locales[name].get("en") != entry["en"]:
            raise RuntimeError(f"LLaMA Board already has an element named `{name}`: the CLIP tab cannot reuse it.")
        locales[name] = {lang: entry.get(lang, entry["en"]) for lang in sorted(languages)}
