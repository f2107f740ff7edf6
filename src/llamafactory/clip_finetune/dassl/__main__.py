"""Print the clip stage arguments of a Dassl-style config as an LLaMA-Factory yaml, for migrating configs.

    python -m llamafactory.clip_finetune.dassl vit_b16 path/to/method.yaml [more.yaml ...]

Several files are merged left to right (later files win), as Dassl's ``merge_from_file`` does; a bare name such as
``vit_b16`` is a config shipped with the package.
"""

import argparse
import sys

import yaml

from .translate import DasslConfigError, translate_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="Dassl-style yaml files")
    opts = parser.parse_args(argv)
    try:
        translation = translate_files(opts.configs)
    except DasslConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("stage: clip")
    for key, value in translation.values.items():
        line = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()[1:-1]
        print(f"{line}  # {translation.source[key]}")
    for key, why in translation.blocked.items():
        print(f"# {key}: not set. {why}")
    for key, why in translation.unused.items():
        print(f"# not used: {key}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
