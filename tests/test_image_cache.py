"""``image_cache``: the training images decoded once into host memory; epochs and cached views crop and flip them.

The reference is the per-item path (decode the file every time): the same seeded draws give the same crops of a
slightly smaller picture, so the outputs agree closely, and exactly where no resize was needed."""

import pytest
import torch
from conftest import DATA_DIR, base_args, read_json
from conftest import image_spec as spec
from llamafactory.train.tuner import run_exp
from PIL import Image

import llamafactory.clip_finetune.data.image_cache as image_cache
import llamafactory.clip_finetune.data.transforms as transforms
from llamafactory.clip_finetune.data.datasets import ClassificationDataset
from llamafactory.clip_finetune.data.image_cache import cache_training_images, estimated_bytes, stored_side
from llamafactory.clip_finetune.data.readers import ClassificationSamples


def photos(tmp_path, count=6):
    """Real-looking JPEGs larger than the stored size: smooth gradients with texture, 150-260 px."""
    paths = []
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        h, w = 150 + 20 * i, 260 - 15 * i
        y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        rgb = torch.stack([x, y, (x + y) / 2]) * 200 + 30 * torch.rand(3, h, w, generator=g)
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rgb.clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(path, quality=90)
        paths.append(str(path))
    return paths


def dataset(paths, pipeline):
    samples = ClassificationSamples(paths, [0] * len(paths), ["a"], list(paths))
    return ClassificationDataset(samples, pipeline, seed=3)


def test_the_store_keeps_the_shorter_side_at_eight_sevenths_and_small_images_as_they_are(tmp_path):
    paths = photos(tmp_path) + [str(next((DATA_DIR / "fashion_mnist" / "test").rglob("*.png")))]  # 28 px
    data = dataset(paths, spec().train_transform())
    assert cache_training_images(data, spec(), "memory", workers=0)
    side = stored_side(64)
    assert side == 74 and all(min(image.shape[-2:]) == side for image in data.decoded[:-1])
    assert data.decoded[-1].shape[-2:] == (28, 28) and data.decoded[-1].dtype == torch.uint8
    first = data.decoded[0]
    assert abs(first.shape[-1] / first.shape[-2] - 260 / 150) < 0.02  # aspect ratio kept
    assert estimated_bytes(1000, 224) == int(1000 * 3 * 256 * 256 * 4 / 3)


def test_cached_crops_follow_the_same_distribution(tmp_path):
    """The augmentation distribution: random-resized-crop's boxes relative to the picture (top, left, height, width
    as fractions) from the stored image follow the file's: the same area and aspect draws (equal per seed up to a
    pixel's rounding, but for draws on a size boundary), and every parameter's deciles equal over 2,000 seeds."""
    data = dataset(photos(tmp_path, 1), spec().train_transform())
    cache_training_images(data, spec(), "memory", workers=0)
    file = transforms.decode(data.samples.images[0], "test")
    assert file.shape[-2:] == (150, 260) and data.decoded[0].shape[-2:] == (74, 128)
    crop = spec().train_transform().transforms[0]
    boxes = {}
    for name, image in (("file", file), ("stored", data.decoded[0])):
        rows = []
        for seed in range(2000):
            torch.manual_seed(seed)
            p = crop.make_params([image])
            h, w = image.shape[-2:]
            rows.append([p["top"] / h, p["left"] / w, p["height"] / h, p["width"] / w])
        boxes[name] = torch.tensor(rows)
    same = (boxes["file"][:, 2:] - boxes["stored"][:, 2:]).abs().amax(dim=1) < 0.03  # a pixel of 74 px: 0.0135
    assert same.float().mean() > 0.95  # the rest: a draw on a size boundary, retried differently
    deciles = torch.linspace(0.1, 0.9, 9)
    for column in range(4):
        a, b = (torch.quantile(boxes[name][:, column], deciles) for name in ("file", "stored"))
        assert (a - b).abs().max() < 0.03, column


def test_cached_eval_style_items_match_the_per_item_path(tmp_path):
    """Without random transforms (resize and center crop): the stored picture resized once more agrees with the
    file's within a few levels."""
    pipeline = spec(("normalize",)).train_transform()
    paths = photos(tmp_path)
    direct, cached = dataset(paths, pipeline), dataset(paths, pipeline)
    cache_training_images(cached, spec(), "memory", workers=0)
    for i in range(len(paths)):
        a, b = direct[i]["pixel_values"].float(), cached[i]["pixel_values"].float()
        assert a.shape == b.shape == (3, 64, 64)
        assert (a - b).abs().mean() < 3.0  # of 255


def test_auto_caches_by_the_datas_size_and_none_never(tmp_path, monkeypatch):
    """``auto`` decides from the store's estimate against a fixed limit, not from the machine's free memory: one
    config gives one pipeline on every host and after a resume."""
    paths = photos(tmp_path, 2)
    data = dataset(paths, spec().train_transform())
    assert not cache_training_images(data, spec(), "none", workers=0) and data.decoded is None
    monkeypatch.setattr(image_cache, "AUTO_LIMIT_GIB", estimated_bytes(2, 64) / 2**30 * 0.99)
    assert not cache_training_images(data, spec(), "auto", workers=0) and data.decoded is None
    monkeypatch.setattr("psutil.virtual_memory", lambda: type("M", (), {"available": 10})())
    assert cache_training_images(data, spec(), "memory", workers=0) and len(data.decoded) == 2  # warned, built
    monkeypatch.undo()
    data.decoded = None
    assert cache_training_images(data, spec(), "auto", workers=0) and len(data.decoded) == 2


@pytest.mark.slow
def test_a_run_decodes_each_training_image_once_across_epochs_and_cached_views(tmp_path, monkeypatch):
    """Three epochs of full finetuning: each training file decoded once with the store, once per epoch without it.
    A linear probe over 3 augmented views: once even without the store (every view from one decode)."""
    calls = []
    original = transforms.decode
    monkeypatch.setattr(transforms, "decode", lambda image, *a, **k: calls.append(image) or original(image, *a, **k))

    def train_decodes(name, **keys):
        calls.clear()
        run_exp(base_args(tmp_path / name, dataloader_num_workers=0, **keys))
        return [c for c in calls if "/train/" in str(c)]

    cached = train_decodes("cached", num_train_epochs=3)
    assert len(cached) == len(set(cached)) == 20  # 2 shots x 10 classes
    assert len(train_decodes("plain", num_train_epochs=3, image_cache="none")) == 60
    probe = dict(finetuning_type="linear_probe", probe_views=3, probe_epochs=5, image_cache="none")
    assert len(train_decodes("probe", **probe)) == 20
    assert read_json(tmp_path / "probe" / "all_results.json")["eval_accuracy"] > 0.1
