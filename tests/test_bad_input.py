"""Bad input -> what happens: each case of docs/bad_input.md, table-driven.

Each case builds its input in a fresh folder and either expects an error fragment (naming the key, file or row) or
checks how the input was handled (converted images, warnings with counts, resumed checkpoints)."""

import csv
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import yaml
from conftest import DATA_DIR, ROOT, TINY_CLIP, base_args, read_json
from llamafactory.train.tuner import run_exp
from PIL import Image
from transformers import CLIPModel, CLIPProcessor, TrainerCallback

from llamafactory.clip_finetune.data import load_clip_datasets
from llamafactory.clip_finetune.data.transforms import decode
from llamafactory.clip_finetune.hparams import ClipDataArguments
from llamafactory.clip_finetune.hparams.output_dir import checkpoint_problem
from llamafactory.clip_finetune.model import TextTokenizer
from llamafactory.clip_finetune.train.arguments import check_clip_args, get_clip_train_args


@pytest.fixture(scope="module")
def processor():
    return CLIPProcessor.from_pretrained(TINY_CLIP)


@pytest.fixture
def logged(caplog):
    """LLaMA-Factory's logger does not propagate to the root: listen on it directly."""
    logger = logging.getLogger("llamafactory")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def png16(path, values: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte (grayscale [H, W] or RGB [H, W, 3]), as scanners and medical tools do."""
    height, width = values.shape[:2]
    color = 0 if values.ndim == 2 else 2
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def solid(color, size=(8, 8), mode="RGB"):
    return Image.new(mode, size, color)


# ---- images: decoded to 8-bit RGB, whatever the file ---------------------------------------------------------


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    gray = np.full((4, 4), 257 * 128, dtype=np.uint16)  # 16-bit mid-gray = 8-bit 128
    png16(tmp_path / "g.png", gray)
    rgb = np.zeros((4, 4, 3), dtype=np.uint16)
    rgb[..., 0], rgb[..., 2] = 65535, 257 * 64
    png16(tmp_path / "c.png", rgb)
    g, c = decode(str(tmp_path / "g.png"), "g"), decode(str(tmp_path / "c.png"), "c")
    assert g.dtype == torch.uint8 and g.shape == (3, 4, 4) and g.unique().tolist() == [128]
    assert c.dtype == torch.uint8 and c[:, 0, 0].tolist() == [255, 0, 64]


def test_a_batch_mixing_8bit_and_16bit_images_collates(processor, tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    png16(root / "a" / "x.png", np.full((40, 40), 65535, dtype=np.uint16))
    solid((10, 20, 30), (40, 40)).save(root / "b" / "y.png")
    (root / "dataset_info.json").write_text(json.dumps({"t": {"file_name": "."}}))
    ds = load_clip_datasets(
        ClipDataArguments(dataset_dir=str(root), eval_dataset="t"),
        "classification",
        0,
        processor.image_processor,
        None,
    )
    batch = torch.utils.data.default_collate([ds.eval[0], ds.eval[1]])
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"][0].unique().tolist() == [255]


def test_animations_use_their_first_frame(tmp_path):
    frames = [solid((255, 0, 0)), solid((0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "a.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    for name in ("a.gif", "a.webp"):
        image = decode(str(tmp_path / name), name)
        assert image.shape == (3, 8, 8)
        assert image[:, 4, 4].tolist()[0] > 200 and image[:, 4, 4].tolist()[2] < 50, name


def test_transparency_is_composited_onto_the_background(tmp_path):
    rgba = solid((0, 0, 0, 0), mode="RGBA")  # fully transparent black: white by default, never black
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.save(tmp_path / "t.png")
    palette = solid(0, mode="P")
    palette.putpalette([0, 0, 0, 200, 0, 0])
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    image = decode(str(tmp_path / "t.png"), "t")
    assert image[:, 4, 4].tolist() == [255, 255, 255] and image[:, 0, 0].tolist() == [10, 20, 30]
    assert decode(str(tmp_path / "t.png"), "t", background=(0, 0, 0))[:, 4, 4].tolist() == [0, 0, 0]
    assert decode(str(tmp_path / "p.png"), "p")[:, 4, 4].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="image_background: `nocolour` is not a colour"):
        ClipDataArguments(image_background="nocolour")


def test_exif_orientation_is_applied_unless_turned_off(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    solid((0, 128, 0), (8, 4)).save(tmp_path / "e.jpg", exif=exif.tobytes())
    assert decode(str(tmp_path / "e.jpg"), "e").shape == (3, 8, 4)
    assert decode(str(tmp_path / "e.jpg"), "e", exif_transpose=False).shape == (3, 4, 8)


@pytest.mark.parametrize("ext", ["tif", "bmp"])
def test_tiff_and_bmp_decode(tmp_path, ext):
    solid((1, 2, 3)).save(tmp_path / f"i.{ext}")
    assert decode(str(tmp_path / f"i.{ext}"), ext)[:, 0, 0].tolist() == [1, 2, 3]


# ---- labels and tables: errors that name the file and the line -----------------------------------------------


def make_table(root, name, rows=None, text=None):
    """An image per row under root/img and a table file; rows are (image, label) or dict rows."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        solid((i * 40, 0, 0)).save(root / "img" / f"{i}.png")
    path = root / name
    if text is not None:
        path.write_text(text)
    elif name.endswith(".csv"):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([("image", "label"), *rows])
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def load(processor, root, info, **data):
    (root / "dataset_info.json").write_text(json.dumps(info))
    args = ClipDataArguments(dataset_dir=str(root), **data)
    return load_clip_datasets(args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer))


TABLE_ERRORS = [
    # (file, rows or text, dataset_info entry extras, error fragment)
    (
        "t.csv",
        [("img/0.png", "cat"), ("img/1.png", "NaN")],
        {},
        r"t.csv line 3: label `NaN` is a missing value.*classnames",
    ),
    ("t.json", None, {}, r"t.json: not valid JSON"),
    (
        "t.jsonl",
        [{"image": "img/0.png", "label": 1.7}],
        {"classnames": ["a", "b"]},
        r"line 1: label 1.7 is not a whole",
    ),
    ("t.csv", [("img/0.png", "1.7")], {"classnames": ["a", "b"]}, r"line 2: label 1.7 is not a whole class index"),
    ("t.csv", [], {}, r"t.csv` holds no rows"),
    ("t.json", [], {}, r"t.json` holds no rows"),
    ("t.csv", [("img", "a")], {}, r"line 2: image file `.*img` is a folder, not an image file"),
    ("t.csv", [("img/0.png", "a")], {"classnames": ["a", "b", "a"]}, r"lists \['a'\] more than once"),
]


@pytest.mark.parametrize("name, rows, extra, message", TABLE_ERRORS)
def test_table_errors_name_the_file_and_line(processor, tmp_path, name, rows, extra, message):
    text = "{not json" if rows is None else None
    make_table(tmp_path, name, rows, text)
    with pytest.raises(ValueError, match=message):
        load(processor, tmp_path, {"t": {"file_name": name, **extra}}, dataset="t")


def test_json_nan_and_broken_jsonl_lines_name_the_line(processor, tmp_path):
    make_table(
        tmp_path, "n.jsonl", text='{"image": "img/0.png", "label": 0}\n\n{"image": "img/1.png", "label": NaN}\n'
    )
    with pytest.raises(ValueError, match=r"n.jsonl line 3: label is nan \(a missing value\)"):
        load(processor, tmp_path, {"t": {"file_name": "n.jsonl", "classnames": ["a"]}}, dataset="t")
    make_table(tmp_path, "b.jsonl", text='{"image": "img/0.png", "label": 0}\n\n{"image": "img/1.png", "lab\n')
    with pytest.raises(ValueError, match=r"b.jsonl line 3: not valid JSON"):
        load(processor, tmp_path, {"t": {"file_name": "b.jsonl", "classnames": ["a"]}}, dataset="t")


def test_nan_is_a_class_only_when_declared(processor, tmp_path):
    make_table(tmp_path, "t.csv", [("img/0.png", "cat"), ("img/1.png", "NaN")])
    ds = load(processor, tmp_path, {"t": {"file_name": "t.csv", "classnames": ["cat", "NaN"]}}, dataset="t")
    assert ds.train.labels.tolist() == [0, 1]


def test_integral_float_labels_are_indices(processor, tmp_path):
    make_table(tmp_path, "t.jsonl", [{"image": "img/0.png", "label": 1.0}, {"image": "img/1.png", "label": "0.0"}])
    ds = load(processor, tmp_path, {"t": {"file_name": "t.jsonl", "classnames": ["a", "b"]}}, dataset="t")
    assert ds.train.labels.tolist() == [1, 0]


def test_symlink_loop_is_named(processor, tmp_path):
    make_table(tmp_path, "t.csv", [("img/loop.png", "a")])
    os.symlink(tmp_path / "img" / "loop.png", tmp_path / "img" / "loop.png")
    with pytest.raises(ValueError, match=r"loop.png` is a symbolic link loop"):
        load(processor, tmp_path, {"t": {"file_name": "t.csv"}}, dataset="t")


def test_two_folders_giving_one_class_name_are_refused(processor, tmp_path):
    for folder in ("t_shirt", "t shirt"):
        (tmp_path / "fm" / folder).mkdir(parents=True)
        solid((0, 0, 0)).save(tmp_path / "fm" / folder / "a.png")
    with pytest.raises(
        ValueError, match=r"class folders `t shirt` and `t_shirt` .* both give the class name `t shirt`"
    ):
        load(processor, tmp_path, {"t": {"file_name": "fm"}}, dataset="t")


def test_an_eval_split_missing_a_class_suggests_classnames(processor, tmp_path):
    make_table(tmp_path, "tr.csv", [("img/0.png", "a"), ("img/1.png", "b")])
    make_table(tmp_path, "te.csv", [("img/2.png", "a")])
    info = {"tr": {"file_name": "tr.csv"}, "te": {"file_name": "te.csv"}}
    with pytest.raises(
        ValueError, match=r"the train dataset \(tr\) has \['a', 'b'\].*give its dataset_info.json entry"
    ):
        load(processor, tmp_path, info, dataset="tr", eval_dataset="te")
    info["te"]["classnames"] = ["a", "b"]
    assert load(processor, tmp_path, info, dataset="tr", eval_dataset="te").eval.labels.tolist() == [0]


def test_num_shots_above_a_class_size_and_shared_images_are_warned(processor, tmp_path, logged):
    make_table(tmp_path, "tr.csv", [("img/0.png", "a"), ("img/1.png", "a"), ("img/2.png", "b")])
    make_table(tmp_path, "te.csv", [("img/1.png", "a"), ("img/3.png", "b")])
    info = {"tr": {"file_name": "tr.csv"}, "te": {"file_name": "te.csv"}}
    load(processor, tmp_path, info, dataset="tr", eval_dataset="te", num_shots=2)
    text = logged.text
    assert (
        "num_shots: 2 train images per class asked for, but 1 class(es) of tr have fewer" in text and "b (1)" in text
    )
    assert "1 of the 2 eval images (te) are also training images (tr), byte for byte" in text


# ---- arguments: refused while parsing -----------------------------------------------------------------------

PARSE_ERRORS = [
    ({"lora_rank": 0, "finetuning_type": "lora"}, r"lora_rank must be at least 1"),
    ({"per_device_eval_batch_size": 0}, r"per_device_eval_batch_size must be at least 1"),
    ({"image_size": 224}, r"image_size: 224 differs from the 32px .* interpolate_pos_encoding: true"),
    ({"image_background": "#12"}, r"image_background: `#12` is not a colour"),
]


@pytest.mark.parametrize("overrides, message", PARSE_ERRORS)
def test_parse_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        check_clip_args(base_args(tmp_path / "o", **overrides))


def test_interpolated_position_embeddings_run_at_another_size(tmp_path):
    run_exp(base_args(tmp_path, image_size=48, interpolate_pos_encoding=True, do_train=False))
    assert 0 <= read_json(tmp_path / "eval_results.json")["eval_accuracy"] <= 1


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"output_dir: `.*f` is a file, not a folder"):
        check_clip_args(base_args(tmp_path / "f"))


# ---- output dirs never mix runs ----------------------------------------------------------------------------


def test_resume_only_the_same_run_and_only_a_whole_checkpoint(tmp_path, logged):
    out = tmp_path / "run"
    args = base_args(out, save_strategy="steps", save_steps=2, max_steps=4, do_eval=False)
    run_exp(args)
    assert json.loads((out / "checkpoint-4" / "clip_run.json").read_text())["learning_rate"] == 1e-3
    # another dataset and learning rate: not a resume of this run
    with pytest.raises(ValueError, match=r"holds a run started with other arguments.*learning_rate: 0.001 -> 0.01"):
        check_clip_args({**args, "learning_rate": 1e-2})
    # a checkpoint cut off mid-write is skipped, with a warning naming it
    weights = out / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (out / "leftover.tmp").write_text("an interrupted atomic write")
    _, _, training_args, _ = check_clip_args(args)
    assert training_args.resume_from_checkpoint == str(out / "checkpoint-2")
    assert (
        "Skipping incomplete checkpoint" in logged.text
        and "checkpoint-4 (model.safetensors: it is truncated" in logged.text
    )
    copy = shutil.copytree(out / "checkpoint-2", tmp_path / "copy")
    (copy / "trainer_state.json").write_text((copy / "trainer_state.json").read_text()[:20])
    assert checkpoint_problem(str(copy)) == "trainer_state.json: it is not complete JSON"
    optimizer = out / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"holds files of another run .* and no complete checkpoint to resume"):
        check_clip_args(args)
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-2.*optimizer.pt: it is truncated"):
        check_clip_args({**args, "resume_from_checkpoint": str(out / "checkpoint-2")})


def test_an_evaluation_never_replaces_another_runs_results(tmp_path):
    out = tmp_path / "run"
    run_exp(base_args(out, do_train=False))
    with pytest.raises(ValueError, match=r"already holds a run .*eval_results.json.*an evaluation would replace"):
        check_clip_args(base_args(out, do_train=False))
    check_clip_args(base_args(out, do_train=False, overwrite_output_dir=True))


def test_the_stages_own_lock_and_temporary_files_are_not_another_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in (".clip_run.lock", ".tensors.lock", "tmpab12.tmp", "training_args.yaml", "running_log.txt"):
        (out / name).write_text("")
    check_clip_args(base_args(out))


def test_a_second_run_into_the_same_output_dir_stops_at_start(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from llamafactory.clip_finetune.hparams.output_dir import lock_output_dir; "
            "lock_output_dir(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=r"another run is writing into .*run` \(pid \d+"):
            get_clip_train_args(base_args(out))
    finally:
        holder.kill()
        holder.wait()
    get_clip_train_args(base_args(out))  # the lock died with its process


# ---- the wrong settings found in review, against independent expectations --------------------------------------


class KeepOptimizer(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer = optimizer


def test_tip_f_example_builds_the_papers_optimizer(tmp_path):
    """Tip-Adapter's main.py: torch.optim.AdamW(adapter.parameters(), lr=cfg['lr'] (1e-3), eps=1e-4), so torch's
    default weight decay 0.01 and betas (0.9, 0.999)."""
    config = yaml.safe_load((ROOT / "examples/clip/tip_f.yaml").read_text())
    config.update(
        model_name_or_path=str(TINY_CLIP),
        dataset_dir=str(DATA_DIR),
        output_dir=str(tmp_path),
        clip_config=",".join(str(ROOT / p) if p.endswith(".yaml") else p for p in config["clip_config"].split(",")),
        image_size=32,
        bf16=False,
        num_shots=2,
        num_train_epochs=1,
        tip_augment_epoch=1,
        do_eval=False,
        tip_search_best=False,
        dataloader_num_workers=0,
    )
    keep = KeepOptimizer()
    run_exp(config, callbacks=[keep])
    group = keep.optimizer.optimizer.param_groups[0] if hasattr(keep.optimizer, "optimizer") else None
    group = group or keep.optimizer.param_groups[0]
    assert type(getattr(keep.optimizer, "optimizer", keep.optimizer)) is torch.optim.AdamW
    assert group["initial_lr"] == 1e-3 and group["eps"] == 1e-4 and group["weight_decay"] == 0.01
    assert group["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("name, eps, betas", [("adam", 1e-3, (0.8, 0.99)), ("adamw", 1e-6, (0.5, 0.9))])
def test_adam_optimizers_take_eps_and_betas(tmp_path, name, eps, betas):
    keep = KeepOptimizer()
    args = base_args(tmp_path, clip_optim=name, adam_epsilon=eps, adam_beta1=betas[0], adam_beta2=betas[1])
    run_exp({**args, "do_eval": False}, callbacks=[keep])
    group = getattr(keep.optimizer, "optimizer", keep.optimizer).param_groups[0]
    assert (group["eps"], group["betas"]) == (eps, betas)


def bias_names(tmp_path, **overrides):
    from llamafactory.clip_finetune.methods import get_method
    from llamafactory.clip_finetune.model import load_clip

    model_args, _, training_args, finetuning_args = check_clip_args(
        base_args(tmp_path, finetuning_type="bias", **overrides)
    )
    clip, _ = load_clip(model_args)
    clip = get_method("bias")().prepare(clip, finetuning_args, training_args)
    return {n for n, p in clip.named_parameters() if p.requires_grad}


def test_bias_terms_match_full_parameter_names(tmp_path):
    every = {n for n, _ in CLIPModel.from_pretrained(TINY_CLIP).named_parameters()}
    vision_biases = {n for n in every if n.startswith("vision_model.") and n.endswith(".bias")}
    assert bias_names(tmp_path, bias_terms=["vision_model"]) == vision_biases
    excluded = bias_names(tmp_path, bias_terms_exclude=["vision_model.post_layernorm"])
    assert "vision_model.post_layernorm.bias" not in excluded and "vision_model.pre_layrnorm.bias" in excluded
    seed = bias_names(tmp_path, bias_terms=["layer_norm", "layernorm"], bias_terms_exclude=["layernorm"])
    assert seed == {n for n in vision_biases if n.endswith((".layer_norm1.bias", ".layer_norm2.bias"))}
