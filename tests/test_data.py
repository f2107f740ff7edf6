"""Dataset formats, few-shot sampling, and the errors for bad data."""

import csv
import json
import os
import shutil

import pytest
import torch
from conftest import DATA_DIR, TINY_CLIP
from transformers import CLIPProcessor

from llamafactory.clip_finetune.data import load_clip_datasets
from llamafactory.clip_finetune.data.dataset_info import get_dataset_attrs
from llamafactory.clip_finetune.data.fewshot import sample_per_class
from llamafactory.clip_finetune.data.readers import read_samples
from llamafactory.clip_finetune.hparams import ClipDataArguments
from llamafactory.clip_finetune.model import TextTokenizer


@pytest.fixture(scope="module")
def processor():
    return CLIPProcessor.from_pretrained(TINY_CLIP)


def load(processor, dataset_dir, info, task="classification", seed=0, **data):
    with open(os.path.join(dataset_dir, "dataset_info.json"), "w") as f:
        json.dump(info, f)
    args = ClipDataArguments(dataset_dir=str(dataset_dir), **data)
    return load_clip_datasets(args, task, seed, processor.image_processor, TextTokenizer(processor.tokenizer))


def fm_images(data_copy, cls):
    return sorted(os.listdir(data_copy / "fm" / cls))


def test_bundled_imagefolder_classes_and_uint8_items(processor):
    args = ClipDataArguments(
        dataset="fashion_mnist_train", eval_dataset="fashion_mnist_test", dataset_dir=str(DATA_DIR)
    )
    ds = load_clip_datasets(args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer))
    assert ds.classnames[:3] == ["ankle boot", "bag", "coat"]
    assert len(ds.classnames) == 10 and len(ds.eval) == 200
    item = ds.train[0]
    assert item["pixel_values"].dtype == torch.uint8 and item["pixel_values"].shape == (3, 32, 32)
    assert ds.templates == ["a photo of a {}.", "a photo of the {}, a type of clothing."]


def test_few_shot_is_k_per_class_reproducible_and_val_keeps_min_k_4(processor):
    info_args = dict(dataset="fashion_mnist_train", val_dataset="fashion_mnist_test", dataset_dir=str(DATA_DIR))
    a = load_clip_datasets(
        ClipDataArguments(num_shots=8, **info_args), "classification", 1, processor.image_processor, None
    )
    b = load_clip_datasets(
        ClipDataArguments(num_shots=8, **info_args), "classification", 1, processor.image_processor, None
    )
    c = load_clip_datasets(
        ClipDataArguments(num_shots=8, **info_args), "classification", 2, processor.image_processor, None
    )
    assert torch.bincount(a.train.labels).tolist() == [8] * 10
    assert torch.bincount(a.val.labels).tolist() == [4] * 10
    assert a.train.samples.images == b.train.samples.images
    assert a.train.samples.images != c.train.samples.images


def test_sample_per_class_takes_all_of_a_small_class():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    picked = sample_per_class(labels, 2, seed=0)
    assert torch.bincount(labels[picked]).tolist() == [2, 1, 2]


def test_csv_with_class_names_and_jsonl_with_indices(processor, data_copy):
    rows = [(f"fm/coat/{n}", "coat") for n in fm_images(data_copy, "coat")[:2]]
    rows += [(f"fm/bag/{n}", "bag") for n in fm_images(data_copy, "bag")[:3]]
    with open(data_copy / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), *rows])
    with open(data_copy / "test.jsonl", "w") as f:
        for path, name in rows:
            f.write(json.dumps({"image": path, "label": ["bag", "coat"].index(name)}) + "\n")
    info = {
        "tr": {"file_name": "train.csv", "image_dir": "."},
        "te": {"file_name": "test.jsonl", "image_dir": ".", "classnames": ["bag", "coat"]},
    }
    ds = load(processor, data_copy, info, dataset="tr", eval_dataset="te")
    assert ds.classnames == ["bag", "coat"]
    assert ds.train.labels.tolist() == [1, 1, 0, 0, 0] == ds.eval.labels.tolist()


def test_label_outside_class_list_names_the_row(processor, data_copy):
    name = fm_images(data_copy, "bag")[0]
    with open(data_copy / "t.jsonl", "w") as f:
        f.write(json.dumps({"image": f"fm/bag/{name}", "label": 0}) + "\n")
        f.write(json.dumps({"image": f"fm/bag/{name}", "label": 7}) + "\n")
    info = {"t": {"file_name": "t.jsonl", "classnames": ["bag", "coat"]}}
    with pytest.raises(ValueError, match=r"t.jsonl line 2: label 7 is outside the 2 classes"):
        load(processor, data_copy, info, dataset="t")


def test_missing_image_file_names_the_row(processor, data_copy):
    with open(data_copy / "t.csv", "w") as f:
        f.write("image,label\nfm/bag/nope.png,bag\n")
    with pytest.raises(ValueError, match=r"t.csv line 2: image file `.*nope.png` does not exist"):
        load(processor, data_copy, {"t": {"file_name": "t.csv"}}, dataset="t")


def test_corrupt_image_names_the_file(processor, data_copy):
    bad = data_copy / "fm" / "bag" / "zz_corrupt.png"
    bad.write_bytes(b"not a png at all")
    ds = load(processor, data_copy, {"t": {"file_name": "fm"}}, dataset="t")
    index = ds.train.samples.images.index(str(bad))
    with pytest.raises(ValueError, match=r"Cannot read image .*zz_corrupt.png"):
        ds.train[index]


def test_empty_class_folder_is_an_error(processor, data_copy):
    (data_copy / "fm" / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"class folder `.*empty_class` holds no images"):
        load(processor, data_copy, {"t": {"file_name": "fm"}}, dataset="t")


def test_train_and_eval_must_share_classes(processor, data_copy):
    info = {"a": {"file_name": "fm"}, "b": {"file_name": "fm", "classnames": ["x", "y", "z"]}}
    with pytest.raises(ValueError, match="must share one class list"):
        load(processor, data_copy, info, dataset="a", eval_dataset="b")


def test_coop_split_file(processor, data_copy):
    images = data_copy / "mini_pets" / "images"
    images.mkdir(parents=True)
    split = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(["bag", "coat"]):
        for i, name in enumerate(fm_images(data_copy, cls)[:4]):
            os.link(data_copy / "fm" / cls / name, images / f"{cls}_{name}")
            split["train" if i < 3 else "test"].append([f"{cls}_{name}", label, cls])
    with open(data_copy / "mini_pets" / "split_zhou_OxfordPets.json", "w") as f:
        json.dump(split, f)
    info = {
        "pets_train": {"file_name": "mini_pets/split_zhou_OxfordPets.json", "split": "train"},
        "pets_test": {"file_name": "mini_pets/split_zhou_OxfordPets.json", "split": "test"},
    }
    ds = load(processor, data_copy, info, dataset="pets_train", eval_dataset="pets_test")
    assert ds.classnames == ["bag", "coat"] and len(ds.train) == 6 and len(ds.eval) == 2
    assert ds.templates == ["a photo of a {}, a type of pet."]  # CoOp's template for OxfordPets


def test_hugging_face_dataset_with_class_label(processor, data_copy):
    import datasets

    paths = [str(data_copy / "fm" / cls / n) for cls in ("bag", "coat") for n in fm_images(data_copy, cls)[:2]]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["bag", "coat"])})
    data = datasets.Dataset.from_dict({"image": paths, "label": [0, 0, 1, 1]}, features=features)
    datasets.DatasetDict({"train": data}).save_to_disk(str(data_copy / "hf_fm"))
    ds = load(processor, data_copy, {"h": {"file_name": "hf_fm", "split": "train"}}, dataset="h")
    assert ds.classnames == ["bag", "coat"]
    assert ds.train[3]["pixel_values"].shape == (3, 32, 32) and int(ds.train[3]["labels"]) == 1


def test_caption_csv_groups_rows_of_one_image(processor, data_copy):
    a, b = fm_images(data_copy, "bag")[:2]
    with open(data_copy / "caps.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ("image", "caption"),
                (f"fm/bag/{a}", "a bag"),
                (f"fm/bag/{b}", "a grey bag"),
                (f"fm/bag/{a}", "a handbag"),
            ]
        )
    info = {"c": {"task": "image_to_text", "file_name": "caps.csv", "columns": {"captions": "caption"}}}
    ds = load(processor, data_copy, info, task="image_to_text", dataset="c", eval_dataset="c")
    assert ds.eval.samples.captions == [["a bag", "a handbag"], ["a grey bag"]]
    assert ds.eval.caption_image.tolist() == [0, 0, 1]
    item = ds.train[0]
    assert item["input_ids"].shape == ds.train.input_ids.shape[1:]


def test_dataset_of_the_wrong_task_is_refused(processor):
    args = ClipDataArguments(dataset="emoji_captions_train", dataset_dir=str(DATA_DIR))
    with pytest.raises(ValueError, match="is a image_to_text dataset, but clip_task is classification"):
        load_clip_datasets(args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer))


def test_unknown_dataset_lists_the_known_ones(processor):
    args = ClipDataArguments(dataset="fashion", dataset_dir=str(DATA_DIR))
    with pytest.raises(ValueError, match="dataset `fashion` is not in .*it has: emoji_captions_test"):
        load_clip_datasets(args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer))


def test_karpathy_caption_file_takes_restval_into_train(processor, data_copy):
    names = fm_images(data_copy, "coat")[:3]
    entries = [
        {"filepath": "fm/coat", "filename": names[0], "split": "train", "sentences": [{"raw": "a coat"}]},
        {"filepath": "fm/coat", "filename": names[1], "split": "restval", "sentences": [{"raw": "a long coat"}]},
        {"filepath": "fm/coat", "filename": names[2], "split": "test", "sentences": [{"raw": "x"}, {"raw": "y"}]},
    ]
    (data_copy / "dataset_k.json").write_text(json.dumps({"images": entries}))
    info = {
        "k_train": {"task": "image_to_text", "file_name": "dataset_k.json", "formatting": "karpathy"},
        "k_test": {"task": "image_to_text", "file_name": "dataset_k.json", "formatting": "karpathy", "split": "test"},
    }
    ds = load(processor, data_copy, info, task="image_to_text", dataset="k_train", eval_dataset="k_test")
    assert ds.train.samples.captions == [["a coat"], ["a long coat"]]
    assert ds.eval.samples.captions == [["x", "y"]] and ds.eval.caption_image.tolist() == [0, 0]


def test_subsample_classes_base_and_new_split_the_classes_coop_style(processor):
    common = dict(dataset="fashion_mnist_train", eval_dataset="fashion_mnist_test", dataset_dir=str(DATA_DIR))
    base = load_clip_datasets(
        ClipDataArguments(subsample_classes="base", **common),
        "classification",
        0,
        processor.image_processor,
        TextTokenizer(processor.tokenizer),
    )
    new = load_clip_datasets(
        ClipDataArguments(subsample_classes="new", **common),
        "classification",
        0,
        processor.image_processor,
        TextTokenizer(processor.tokenizer),
    )
    assert base.classnames == ["ankle boot", "bag", "coat", "dress", "pullover"]
    assert new.classnames == ["sandal", "shirt", "sneaker", "t-shirt", "trouser"]
    assert base.train.labels.unique().tolist() == [0, 1, 2, 3, 4] == new.eval.labels.unique().tolist()
    assert len(base.train) == 200 and len(new.eval) == 100


def test_max_samples_is_a_seeded_random_subset_across_classes(processor):
    args = ClipDataArguments(dataset="fashion_mnist_train", dataset_dir=str(DATA_DIR), max_samples=100)
    a = load_clip_datasets(args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer))
    b = load_clip_datasets(args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer))
    assert len(a.train) == 100 and len(a.train.labels.unique()) == 10  # the folder is sorted by class
    assert a.train.samples.images == b.train.samples.images


def _imagenet_like(root, folders, png):
    for folder in folders:
        (root / folder).mkdir(parents=True)
        shutil.copy(png, root / folder / "a.png")
    (root / "README.txt").write_text("not a class")  # ImageNet-A ships one


def test_imagenet_shift_folders_read_through_a_class_map(tmp_path):
    """ImageNet-V2 (folders by position, 0..11 sort as text differently), -A/-R (a subset of WordNet-id folders) and
    -Sketch (all of them) give the map's label order and names, as CoOp's readers do."""
    png = next((DATA_DIR / "fashion_mnist" / "test").rglob("*.png"))
    wnids = [f"n{index:08d}" for index in range(12)]
    (tmp_path / "classnames.txt").write_text("".join(f"{w} class number {i}\n" for i, w in enumerate(wnids)))
    _imagenet_like(tmp_path / "v2", [str(i) for i in range(12)], png)
    _imagenet_like(tmp_path / "a", [wnids[7], wnids[2], wnids[11]], png)
    _imagenet_like(tmp_path / "bad", [wnids[0], "n99"], png)
    info = {name: {"file_name": name, "class_map": "classnames.txt"} for name in ("v2", "a", "bad")}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    v2 = read_samples(get_dataset_attrs(["v2"], str(tmp_path), "classification")[0])
    assert v2.classnames == [f"class number {i}" for i in range(12)]
    assert [v2.classnames[label] for label in v2.labels] == [f"class number {i}" for i in range(12)]
    assert all(f"/v2/{i}/" in path for i, path in enumerate(v2.images))
    subset = read_samples(get_dataset_attrs(["a"], str(tmp_path), "classification")[0])
    assert subset.classnames == ["class number 2", "class number 7", "class number 11"]
    assert [f"/{wnids[i]}/" in p for i, p in zip((2, 7, 11), subset.images, strict=True)] == [True] * 3
    with pytest.raises(ValueError, match="class folder `n99` .* neither a key of its class_map nor a class position"):
        read_samples(get_dataset_attrs(["bad"], str(tmp_path), "classification")[0])
