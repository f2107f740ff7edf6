#!/usr/bin/env python
"""Rebuild the two small, real, redistributable datasets bundled under data/.

Why: tests and examples must finetune CLIP offline on real images, so we ship tiny
subsets of openly licensed data (both sources come from ordinary package registries):

* data/fashion_mnist/   image-folder classification (Fashion-MNIST, MIT, Zalando SE),
  from the Debian package ``dataset-fashion-mnist``: 40 train + 10 val + 20 test images per class,
  28x28 RGB PNGs named ``<index in the official split>.png``, plus classnames.txt.
* data/emoji_captions/  image-caption retrieval (Noto Emoji images, Apache-2.0; names
  from iamcal/emoji-data, MIT), from the npm package ``emoji-datasource-google``:
  240 emojis as 64x64 RGB PNGs, train.jsonl (200 rows) and test.jsonl (40 rows), each row
  {"image": "images/<unified>.png", "captions": ["<name>", "an emoji of <short name> (<category>)"]};
  train.jsonl is also split into val.jsonl (its last 40 rows) and train_fit.jsonl (the other 160), for runs that
  need a validation split disjoint from the training images (the test rows stay apart).

Everything is deterministic (seed 0, pinned npm version), so reruns give the same files.

Usage:
    apt-get install dataset-fashion-mnist
    python scripts/build_datasets.py [--fashion-dir DIR] [--emoji-pkg DIR_OR_TGZ]
Without --emoji-pkg the npm package is fetched with ``npm pack`` into a temp dir.
"""

import argparse
import gzip
import json
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


ROOT = Path(__file__).resolve().parents[1] / "data"
SEED = 0
FASHION_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]  # label order 0..9
FASHION_PER_CLASS = {"train": 40, "test": 20}
FASHION_VAL = 10  # per class, from the official train split, disjoint from the 40 train images
EMOJI_NPM = "emoji-datasource-google@16.0.0"
EMOJI_TRAIN, EMOJI_TEST = 200, 40
EMOJI_VAL = 40  # val.jsonl: the last rows of train.jsonl; train_fit.jsonl: the rest (disjoint from val and test)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format): big-endian dims header, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def build_fashion(src: Path, out: Path) -> None:
    """Sample a fixed number of images per class (seeded) from each official split."""
    rng = np.random.default_rng(SEED)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        for label, name in enumerate(FASHION_CLASSES):
            perm = rng.permutation(np.flatnonzero(labels == label))
            count = FASHION_PER_CLASS[split]
            # the validation split: the next images of the same train permutation, disjoint from train
            parts = {split: perm[:count]} | ({"val": perm[count : count + FASHION_VAL]} if split == "train" else {})
            for part, picks in parts.items():
                folder = out / part / name.replace(" ", "_")
                folder.mkdir(parents=True)
                for idx in np.sort(picks):
                    Image.fromarray(images[idx]).convert("RGB").save(folder / f"{idx}.png", optimize=True)
    (out / "classnames.txt").write_text("\n".join(FASHION_CLASSES) + "\n")


def fetch_emoji_pkg(tmp: Path) -> Path:
    """``npm pack`` the pinned emoji-datasource-google release and unpack it."""
    subprocess.run(["npm", "pack", EMOJI_NPM, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    return next(tmp.glob("emoji-datasource-google-*.tgz"))


def pick_emojis(entries: list[dict], img_dir: Path) -> list[dict]:
    """Keep plain emojis with a descriptive name, then take 240 evenly spread over sort order.

    Skipped: flags, keycaps, boxed letters, skin-tone modifiers (variants live in
    ``skin_variations`` and are never used), deprecated entries, and short names that are
    just codes like "ab", "o2", "+1" (useless as captions).
    """

    def ok(e: dict) -> bool:
        return (
            e["has_img_google"]
            and (img_dir / e["image"]).exists()
            and e["category"] not in ("Flags", "Component")
            and e["subcategory"] not in ("keycap", "alphanum")
            and not e.get("obsoleted_by")
            and "skin tone" not in e["name"].lower()
            and "regional" not in e["name"].lower()
            and re.fullmatch(r"[a-z]+(_[a-z]+)*", e["short_name"]) is not None
            and len(e["short_name"].replace("_", "")) >= 3
        )

    cands = sorted(filter(ok, entries), key=lambda e: e["sort_order"])
    n = EMOJI_TRAIN + EMOJI_TEST
    return [cands[i * len(cands) // n] for i in range(n)]


def build_emoji(pkg: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if pkg is None:
            pkg = fetch_emoji_pkg(tmp)
        if pkg.is_file():  # a .tgz from npm pack
            with tarfile.open(pkg) as tar:
                tar.extractall(tmp, filter="data")
            pkg = tmp / "package"
        img_dir = pkg / "img" / "google" / "64"
        chosen = pick_emojis(json.loads((pkg / "emoji.json").read_text()), img_dir)

        (out / "images").mkdir(parents=True)
        rows = []
        for e in chosen:
            rgba = Image.open(img_dir / e["image"]).convert("RGBA").resize((64, 64), Image.BICUBIC)
            rgb = Image.new("RGB", rgba.size, "white")
            rgb.paste(rgba, mask=rgba.getchannel("A"))
            rgb.save(out / "images" / f"{e['unified']}.png", optimize=True)
            short = e["short_name"].replace("_", " ")
            rows.append(
                {
                    "image": f"images/{e['unified']}.png",
                    "captions": [e["name"].lower(), f"an emoji of {short} ({e['category'].lower()})"],
                }
            )

    random.Random(SEED).shuffle(rows)
    fit = EMOJI_TRAIN - EMOJI_VAL
    parts = {
        "train": rows[:EMOJI_TRAIN],
        "test": rows[EMOJI_TRAIN:],
        "train_fit": rows[:fit],
        "val": rows[fit:EMOJI_TRAIN],
    }
    for name, part in parts.items():
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--emoji-pkg", type=Path, help="extracted npm package dir or its .tgz")
    args = ap.parse_args()

    for name in ("fashion_mnist", "emoji_captions"):
        shutil.rmtree(ROOT / name, ignore_errors=True)
    build_fashion(args.fashion_dir, ROOT / "fashion_mnist")
    build_emoji(args.emoji_pkg, ROOT / "emoji_captions")
    print(f"wrote {ROOT / 'fashion_mnist'} and {ROOT / 'emoji_captions'}")


if __name__ == "__main__":
    main()
