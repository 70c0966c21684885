"""How long the ``mimkit`` command takes to answer ``--help``, ``--version`` and a config mistake, next to what
importing the model stack costs (which the command paid before every answer until it parsed and validated first).

Each command runs as a fresh process ``--repeats`` times; the table shows median, min and max wall seconds.
Run it on an idle machine: ``python benchmarks/cli_startup.py``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "mimkit --help": ["-m", "mimkit", "--help"],
    "mimkit --version": ["-m", "mimkit", "--version"],
    "mimkit pretrain train.epochs=0 (config error)": ["-m", "mimkit", "pretrain", "train.epochs=0"],
    "mimkit pretrain --config mae/vit_base_800ep model.args.mask_ratio=0": [
        "-m",
        "mimkit",
        "pretrain",
        "--config",
        "mae/vit_base_800ep",
        "model.args.mask_ratio=0",
    ],
    "reference: import mimkit.models (torch, timm, torchvision)": ["-c", "import mimkit.models"],
}


def time_command(arguments: list[str], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *arguments], capture_output=True, check=False)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    time_command(COMMANDS["mimkit --help"], 1)  # warm the file cache
    print(f"| command | median s | min s | max s |  ({args.repeats} fresh processes each)")
    print("|---|---|---|---|")
    for name, arguments in COMMANDS.items():
        seconds = time_command(arguments, args.repeats)
        print(f"| {name} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | {max(seconds):.2f} |")


if __name__ == "__main__":
    main()
