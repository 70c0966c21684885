"""The frozen teacher's share of an MR-MAE pretraining step (forward, loss, backward, AdamW).

python benchmarks/mrmae_teacher_share.py --models mrmae_vit_base mrmcmae_base --batch 8

The teacher is the CLIP ViT-B/16 image tower architecture (``vit_base_patch16_clip_224.openai``) with random
weights written to a temporary file: the same compute as the real one, nothing downloaded. A model may carry
overrides, ``name:field=value,field=value`` (e.g. ``mrmae_vit_base:focused_mimicking=true``). The teacher time is
``model.teach`` alone (inference mode), measured on the same images right after each step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
from pretrain_step import parse_variant  # the sibling script (benchmarks/ is on sys.path when run)
from safetensors.torch import save_file

import mimkit
from mimkit.engine.optim import adamw
from mimkit.patches import grid_size


def random_teacher_file(folder: Path, name: str) -> Path:
    path = folder / f"{name}.safetensors"
    network = timm.create_model(name, pretrained=False)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mrmae_vit_base", "mrmcmae_base"])
    parser.add_argument("--teacher", default="vit_base_patch16_clip_224.openai")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16-teacher", action="store_true", help="teacher under bf16 autocast")
    args = parser.parse_args()
    size = (args.image_size, args.image_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {size[0]} px")
    print(f"teacher {args.teacher} ({'bf16' if args.bf16_teacher else 'fp32'}), student fp32")
    width = max(24, *(len(spec) for spec in args.models))
    print(f"{'model':<{width}} {'step s':>8} {'teacher s':>10} {'share':>7}")
    images = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        teacher = {"kind": "timm_vit", "name": args.teacher, "bf16": args.bf16_teacher}
        teacher["weights"] = str(random_teacher_file(Path(folder), args.teacher))
        for spec in args.models:
            name, overrides = parse_variant(spec)
            torch.manual_seed(0)
            model = mimkit.create_model(name, img_size=args.image_size, teacher=teacher, **overrides)
            optimizer = adamw(model.parameters(), lr=1e-4)
            noise = model.sample_noise(args.batch, size, torch.Generator().manual_seed(1))
            grid = grid_size(*size, model.patch_size)
            steps, teaching = [], []
            for index in range(args.warmup + args.repeats):
                start = time.perf_counter()
                model(images, noise=noise)["loss"].backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                middle = time.perf_counter()
                model.teach(images, grid)
                end = time.perf_counter()
                if index >= args.warmup:
                    steps.append(middle - start)
                    teaching.append(end - middle)
            step, taught = statistics.median(steps), statistics.median(teaching)
            print(f"{spec:<{width}} {step:>8.3f} {taught:>10.3f} {taught / step:>7.1%}")


if __name__ == "__main__":
    main()
