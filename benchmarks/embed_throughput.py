"""How fast does a frozen backbone embed a pool on a CPU? todal's path against a plain PyTorch loop.

    .venv/bin/python benchmarks/embed_throughput.py [--images 128] [--repeats 2]

Why (issue 21): a frozen project embeds every image once; that pass is the one cost that grows with the pool
and the backbone, so it must run at the speed of the model, not of todal's plumbing.

What: a ResNet-50-sized backbone (transformers `ResNetConfig()`, the ResNet-50 layout: bottleneck blocks
3-4-6-3, 25.6M parameters, random weights, `save_pretrained` into a temporary folder and loaded as
`hf:DIR`) on N random 224x224 RGB uint8 images held in memory. todal: `todal.models.frozen.embed_rows` (the
dataset's test transform, the model's input adapter, its pooled features, written into a memory-mapped
float32 array). Plain: `torch.inference_mode()`, the same normalized tensors in batches of the same size,
`backbone(pixel_values=x).pooler_output`. The two paths alternate (so a busy machine slows both alike),
best of `--repeats` each: images per second, and their ratio.

Writes benchmarks/embed-throughput/{results.json, README.md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "embed-throughput"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import transformers

    from todal.data import ArrayDataset
    from todal.data.transforms import normalize
    from todal.models import ModelSource
    from todal.models.frozen import embed_rows

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 224, 224), dtype=torch.uint8, generator=g)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    data = ArrayDataset(x, torch.zeros(args.images, dtype=torch.long), num_classes=2, mean=mean, std=std)
    with tempfile.TemporaryDirectory() as tmp:
        transformers.ResNetModel(transformers.ResNetConfig()).save_pretrained(tmp)
        (Path(tmp) / "preprocessor_config.json").write_text(json.dumps(
            {"size": {"shortest_edge": 224}, "image_mean": list(mean), "image_std": list(std), "do_normalize": True}))
        model = ModelSource(f"hf:{tmp}").build(in_channels=3, num_classes=2).eval()
    backbone = model.backbone
    params = sum(p.numel() for p in backbone.parameters())
    out = np.zeros((args.images, model.embed_dim), dtype=np.float32)

    def todal_path():
        embed_rows(model, data, torch.arange(args.images), out, batch_size=args.batch, device=torch.device("cpu"))

    batches = [normalize(x[i:i + args.batch], mean, std) for i in range(0, args.images, args.batch)]

    def plain():
        with torch.inference_mode():
            return [backbone(pixel_values=b).pooler_output.flatten(1) for b in batches]

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    plain(), todal_path()  # warm-up: allocations, one-time kernels
    runs = [(timed(plain), timed(todal_path)) for _ in range(args.repeats)]  # interleaved: load hits both alike
    t_plain, t_todal = min(r[0] for r in runs), min(r[1] for r in runs)
    same = bool(np.allclose(out, torch.cat(plain()).numpy(), atol=1e-4))
    result = {"command": ".venv/bin/python benchmarks/embed_throughput.py" + (" " + " ".join(argv) if argv else ""),
              "backbone": "transformers ResNetConfig() (ResNet-50 layout), random weights", "parameters": params,
              "images": args.images, "side": 224, "batch": args.batch, "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(), "machine": f"{platform.machine()}, torch {torch.__version__}",
              "plain_images_per_s": args.images / t_plain, "todal_images_per_s": args.images / t_todal,
              "todal_over_plain_time": t_todal / t_plain, "same_features": same}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / "README.md").write_text(
        "# Embedding throughput of a frozen backbone on the CPU\n\n"
        f"Command: `{result['command']}` ({result['machine']}, {result['torch_threads']} threads).\n\n"
        f"A ResNet-50-sized backbone ({params / 1e6:.1f}M parameters, transformers `ResNetConfig()`, loaded as "
        f"`hf:DIR`) embeds {args.images} random 224x224 RGB images in batches of {args.batch}, the paths "
        f"alternating, best of "
        f"{args.repeats}:\n\n| path | images/s |\n|---|---|\n"
        f"| plain PyTorch loop (`inference_mode`, normalized tensors ready) | {result['plain_images_per_s']:.1f} |\n"
        f"| todal (`todal.models.frozen.embed_rows`: transform, adapter, memory-mapped output) | "
        f"{result['todal_images_per_s']:.1f} |\n\n"
        f"todal's time is {result['todal_over_plain_time']:.2f}x the plain loop's; the features are the same "
        f"({'yes' if same else 'NO'}, within 1e-4). At this rate a pool of 10^5 images takes about "
        f"{1e5 / result['todal_images_per_s'] / 3600:.1f} hours once; every step after reads the cache.\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
