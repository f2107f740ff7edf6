"""``image_decode_device``: JPEG bytes from the loader, decoded and finished on the device with the worker's draws.

The reference is the CPU path (Pillow decode, then torchvision's transforms under the item's seed). Run on the CPU
here (TorchCodec's CPU decoder stands in for nvJPEG: same bytes in, same kernels after), the two give the same
pixels; on a GPU, nvJPEG's IDCT differs by a level or two (the GPU script measures it)."""

import io
import json
import subprocess
import sys

import pytest
import torch
from conftest import DATA_DIR, ROOT, base_args, image_spec, read_json
from hypothesis import given, settings
from hypothesis import strategies as st
from llamafactory.train.tuner import run_exp
from PIL import Image

import llamafactory.clip_finetune.train.workflow as workflow
from llamafactory.clip_finetune.data.datasets import ClassificationDataset, collate
from llamafactory.clip_finetune.data.device_decode import assemble, encode, use_device_decode, without_exif
from llamafactory.clip_finetune.data.readers import ClassificationSamples
from llamafactory.clip_finetune.data.transforms import decode


CPU = torch.device("cpu")


def spec(transforms_=("random_resized_crop", "random_flip", "normalize"), squash=False):
    return image_spec(transforms_, size=48, crop_scale=(0.3, 1.0), squash=squash)


def photo(h, w, seed, mode="RGB", orientation=None, fmt="JPEG") -> bytes:
    """A textured, asymmetric picture (a gradient and a bright corner), so a wrong flip or rotation shows."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    rgb = torch.stack([x, y, x * y]) * 200 + 40 * torch.rand(3, h, w, generator=g)
    rgb[:, : h // 5, : w // 7] = 255
    img = Image.fromarray(rgb.clamp(0, 255).byte().permute(1, 2, 0).numpy()).convert(mode)
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(out, format=fmt, quality=90, exif=exif.tobytes()) if fmt == "JPEG" else img.save(out, format=fmt)
    return out.getvalue()


def dataset(blobs, pipeline, device_decode=True):
    images = [{"bytes": blob, "path": f"img{i}.jpg"} for i, blob in enumerate(blobs)]
    samples = ClassificationSamples(
        images, list(range(len(blobs))), [str(i) for i in range(len(blobs))], ["t"] * len(blobs)
    )
    data = ClassificationDataset(samples, pipeline, seed=5)
    data.device_decode = device_decode
    return data


def both_paths(blobs, pipeline, epoch=0):
    """(the CPU path's batch, the device path's batch assembled on the CPU) of the same items."""
    cpu, dev = dataset(blobs, pipeline, False), dataset(blobs, pipeline, True)
    cpu.set_epoch(epoch), dev.set_epoch(epoch)
    reference = collate([cpu[i] for i in range(len(blobs))])
    batch = collate([dev[i] for i in range(len(blobs))])
    return reference, batch


@pytest.mark.parametrize("transforms_", [("random_resized_crop", "random_flip"), ("random_flip",), ()])
@pytest.mark.parametrize("squash", [False, True])
def test_the_device_path_gives_the_cpu_paths_pixels(transforms_, squash):
    """Training (random resized crop and flip, or resize and flip) and evaluation transforms, shorter side and
    squashed resizes, colour and gray JPEGs of several shapes, over two epochs' draws."""
    blobs = [photo(90, 130, 0), photo(140, 70, 1), photo(64, 64, 2, "L"), photo(200, 150, 3)]
    for epoch in (0, 1):
        pipe = spec(transforms_, squash=squash)
        pipeline = pipe.train_transform() if transforms_ else pipe.eval_transform()
        reference, batch = both_paths(blobs, pipeline, epoch)
        assert "pixel_values" not in batch and batch["encoded"].rows == [0, 1, 2, 3]
        assert torch.equal(batch["labels"], reference["labels"])
        pixels = assemble(batch, CPU)["pixel_values"]
        assert pixels.dtype == torch.uint8 and pixels.shape == reference["pixel_values"].shape == (4, 3, 48, 48)
        assert torch.equal(pixels, reference["pixel_values"])


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("exif_transpose", [True, False])
def test_exif_orientations_are_applied_as_pillow_applies_them(orientation, exif_transpose):
    """Every EXIF orientation, applied (as Pillow's ``exif_transpose``) or not (``exif_transpose: false``), whatever
    the device decoder does with the tag itself (TorchCodec's CPU decoder applies it); a CPU-decoded fallback too."""
    blob = photo(60, 100, orientation, orientation=orientation)
    shape = decode({"bytes": blob}, "t", exif_transpose=exif_transpose).shape
    assert shape[-2:] == ((100, 60) if orientation >= 5 and exif_transpose else (60, 100))
    for pipeline in (spec().train_transform(), spec(()).eval_transform()):
        pipeline.exif_transpose = exif_transpose
        reference, batch = both_paths([blob], pipeline)
        assert batch["encoded"].items[0].plan[0][0] == (orientation if exif_transpose else 1)
        assert torch.equal(assemble(batch, CPU)["pixel_values"], reference["pixel_values"])
    data = dataset([blob, blob[: len(blob) // 2]], pipeline)  # a truncated file: the decoder refuses the batch, so
    batch = collate([data[0], data[1]])  # both go to the CPU path's decoder, whose error names the file
    with pytest.raises(ValueError, match="Cannot read image img1.jpg"):
        assemble(batch, CPU)


XMP_ORIENTATION = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/'
    b'tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


@pytest.mark.parametrize("where", ["xmp only", "xmp before exif"])
def test_an_orientation_pillow_reads_elsewhere_than_the_decoders_is_applied_once(where):
    """Pillow also reads an XMP orientation, and TorchCodec only the first APP1 segment: the worker drops the EXIF
    segments, so no decoder turns the picture itself and the device applies the tag Pillow applies."""
    img, out = Image.open(io.BytesIO(photo(60, 100, 0))), io.BytesIO()
    exif = Image.Exif()
    if where == "xmp before exif":
        exif[0x0112] = 3
    img.save(out, format="JPEG", quality=95, xmp=XMP_ORIENTATION, exif=exif.tobytes())
    blob = out.getvalue()
    assert decode({"bytes": blob}, "t").shape[-2:] == ((100, 60) if where == "xmp only" else (60, 100))
    for pipeline in (spec().train_transform(), spec(()).eval_transform()):
        reference, batch = both_paths([blob], pipeline)
        assert torch.equal(assemble(batch, CPU)["pixel_values"], reference["pixel_values"])


def test_dropping_exif_leaves_the_compressed_picture_as_it_was():
    from torchcodec.decoders import decode_jpeg

    for orientation in (1, 6):
        blob = photo(70, 90, orientation, orientation=orientation)
        stripped = without_exif(blob)
        assert b"Exif\x00\x00" in blob and b"Exif\x00\x00" not in stripped and len(stripped) < len(blob)
        raw = decode({"bytes": blob}, "t", exif_transpose=False)
        assert torch.equal(decode_jpeg(torch.frombuffer(bytearray(stripped), dtype=torch.uint8)), raw)
    png = photo(20, 20, 0, fmt="PNG")
    assert without_exif(png) == png


def test_loader_workers_send_encoded_batches_without_a_file_handle_per_image():
    """Under a 256 open-file limit, two workers and batches of 128 JPEGs: shared-memory tensors per image would run
    out of handles (the worker's send thread fails and the loader waits forever); plain bytes do not."""
    script = f"""
import resource, sys, torch
sys.path.insert(0, {str(ROOT / "tests")!r})
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from torch.utils.data import DataLoader
from test_device_decode import dataset, photo, spec
from llamafactory.clip_finetune.data.datasets import collate
data = dataset([photo(24, 24, i % 7) for i in range(512)], spec().train_transform())
loader = DataLoader(data, batch_size=128, num_workers=2, collate_fn=collate, timeout=60)
print(sum(len(batch["encoded"].rows) for batch in loader))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split()[-1] == "512", out.stderr[-2000:]


def test_other_formats_decode_in_the_worker_and_fill_their_rows():
    """A PNG, a CMYK JPEG and a JPEG: the first two arrive as pixels, the batch keeps the item order."""
    png, jpeg = photo(80, 90, 0, fmt="PNG"), photo(70, 110, 1)
    cmyk = photo(75, 95, 2, mode="CMYK")
    reference, batch = both_paths([png, jpeg, cmyk, jpeg], spec().train_transform())
    assert batch["encoded"].rows == [1, 3] and batch["pixel_values"].shape[0] == 2
    assert torch.equal(assemble(batch, CPU)["pixel_values"], reference["pixel_values"])


def test_the_draws_are_the_cpu_transforms_draws():
    """Crop boxes and flips drawn from the header's size under the item's seed equal the ones torchvision draws on
    the decoded picture, for 300 seeds: the same distribution because the same draws."""
    blob = photo(120, 200, 0)
    pipeline = spec().train_transform()
    crop, flip = pipeline.transforms
    picture = decode({"bytes": blob}, "t")
    for seed in range(300):
        torch.manual_seed(seed)
        plan = encode(pipeline, {"bytes": blob}, "t").plan[0]
        torch.manual_seed(seed)
        params = crop.make_params([picture])
        flipped = bool(torch.rand(1) < flip.p)
        assert plan[1:] == [params["top"], params["left"], params["height"], params["width"], int(flipped)]


def test_cached_views_come_from_one_decode_with_each_views_draws():
    """A feature cache's views of a JPEG: decoded once, view v with epoch v's draws, equal to the CPU path's views
    (also from one decode) and to each view drawn as its own item (the per-item path's epoch v)."""
    blobs = [photo(90, 130, 0), photo(80, 80, 1, fmt="PNG"), photo(140, 70, 2)]
    pipeline = spec().train_transform()
    cpu, dev = dataset(blobs, pipeline, False), dataset(blobs, pipeline, True)
    reference = collate([cpu.views(i, 4) for i in range(3)])["pixel_values"]
    batch = collate([dev.views(i, 4) for i in range(3)])
    assert batch["encoded"].rows == [0, 2] and [len(row) for row in batch["encoded"].items[0].plan] == [6] * 4
    pixels = assemble(batch, CPU)["pixel_values"]
    assert pixels.shape == reference.shape == (3, 4, 3, 48, 48) and torch.equal(pixels, reference)
    for view in range(4):
        assert torch.equal(
            pixels[:, view], torch.stack([cpu.__getitem__(i, epoch=view)["pixel_values"] for i in range(3)])
        )
    assert not torch.equal(pixels[:, 0], pixels[:, 1])


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 90), st.integers(8, 90), st.integers(0, 2**31))
def test_any_jpeg_size_gives_a_square_of_the_training_size(h, w, seed):
    reference, batch = both_paths([photo(h, w, seed % 97)], spec().train_transform(), epoch=seed % 5)
    assert torch.equal(assemble(batch, CPU)["pixel_values"], reference["pixel_values"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device")
def test_on_a_gpu_nvjpeg_and_the_device_kernels_agree_with_the_cpu_path():
    """The GPU run (evaluation/gpu_benchmark.sh): nvJPEG's IDCT and CUDA's resampling differ from libjpeg-turbo's
    and the CPU kernels by a level or so, not more; the crops are the same boxes."""
    cuda = torch.device("cuda")
    assert use_device_decode("auto", cuda)
    blobs = [photo(90, 130, 0), photo(140, 70, 1, "L"), photo(300, 200, 2, orientation=6), photo(500, 400, 3)]
    for pipeline in (spec().train_transform(), spec(()).eval_transform()):
        reference, batch = both_paths(blobs, pipeline)
        pixels = assemble(batch, cuda)["pixel_values"]
        assert pixels.device.type == "cuda" and pixels.shape == reference["pixel_values"].shape
        diff = (pixels.cpu().float() - reference["pixel_values"].float()).abs()
        assert diff.mean() < 1.5 and torch.quantile(diff.flatten(), 0.99) <= 6, (diff.mean(), diff.amax())


def test_the_setting_is_checked_against_the_runs_device(tmp_path):
    from llamafactory.clip_finetune.train.arguments import check_clip_args

    with pytest.raises(ValueError, match=r"image_decode_device: `gpu` is not one of \['auto', 'cpu', 'cuda'\]"):
        check_clip_args(base_args(tmp_path, image_decode_device="gpu"))
    assert not use_device_decode("cpu", CPU) and not use_device_decode("auto", CPU)
    with pytest.raises(ValueError, match="image_decode_device: cuda needs a CUDA device, but this run uses cpu"):
        use_device_decode("cuda", CPU)
    if not torch.cuda.is_available():  # a CUDA device nvJPEG cannot use: auto falls back, cuda says why
        assert not use_device_decode("auto", torch.device("cuda"))
        with pytest.raises(ValueError, match="image_decode_device: cuda, but nvJPEG cannot decode on cuda"):
            use_device_decode("cuda", torch.device("cuda"))


def jpeg_copy(tmp_path) -> str:
    """The bundled Fashion-MNIST train and test folders as JPEG files, registered in a dataset_info.json."""
    for split in ("train", "test"):
        for path in sorted((DATA_DIR / "fashion_mnist" / split).rglob("*.png")):
            target = tmp_path / "fm_jpeg" / split / path.parent.name / (path.stem + ".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("RGB").resize((40, 40)).save(target, quality=92)
    info = {f"fmj_{s}": {"task": "classification", "file_name": f"fm_jpeg/{s}"} for s in ("train", "test")}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    return str(tmp_path)


@pytest.mark.slow
def test_a_run_through_the_device_path_equals_the_cpu_path(tmp_path, monkeypatch):
    """Training (decoded per item, through a loader worker: the bytes pickle) and evaluation through the device path,
    on the CPU, give the CPU path's losses and accuracy."""
    keys = dict(
        dataset_dir=jpeg_copy(tmp_path),
        dataset="fmj_train",
        eval_dataset="fmj_test",
        image_cache="none",
        dataloader_num_workers=1,
        num_train_epochs=2,
    )
    run_exp(base_args(tmp_path / "cpu", **keys))
    calls = []
    monkeypatch.setattr(workflow, "use_device_decode", lambda choice, device: calls.append(choice) or True)
    run_exp(base_args(tmp_path / "device", **keys))
    assert calls == ["auto"]
    losses = [
        [row["loss"] for row in map(json.loads, (tmp_path / run / "trainer_log.jsonl").open()) if "loss" in row]
        for run in ("cpu", "device")
    ]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    results = [read_json(tmp_path / run / "all_results.json") for run in ("cpu", "device")]
    assert results[0]["eval_accuracy"] == results[1]["eval_accuracy"]


@pytest.mark.slow
def test_the_benchmark_measures_the_pipeline_from_files():
    """``evaluation/benchmark.py --from_files`` on the CPU: decoded per item, bytes only (the device path's loader
    side), decoded once; the end-to-end GPU runs are skipped without a GPU."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "evaluation" / "benchmark.py"), "--from_files", "--tiny", "--files", "48"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["files"] == 48
    for key in ("per_item_images_per_s", "bytes_only_loader_images_per_s", "from_store_images_per_s"):
        assert result[key] > 0, key
    assert "stage_device_images_per_s" not in result
