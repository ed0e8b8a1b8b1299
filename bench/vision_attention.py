"""Qwen2.5-VL-3B vision tower: transformers' per-window attention against the batched one (one SDPA call).

Random weights (speed does not depend on their values), the 3B vision config with ``--depth`` layers (the
full tower has 32: 28 windowed + 4 full; the bench keeps that 7:1 mix), one 640x360 view (1196 patches,
24 windows), float32 on the CPU or the configured dtype on a GPU. Runs alternate between the two paths so
a noisy machine affects both alike; the headline is ``batched_speedup`` (per-window p50 / batched p50)
and ``max_relative_difference`` of the outputs.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, emit, percentiles_ms  # noqa: E402


def main() -> None:
    """Build the tower, time both paths alternately, emit the JSON."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=None, help="vision layers (default 8; quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per path (default 10)")
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    import torch
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from models.config import load_model_config
    from models.vision_attention import use_batched_vision_attention

    depth = args.depth or (4 if args.quick else 8)
    repeats = args.repeats or (3 if args.quick else 10)
    vision = dict(load_model_config("qwen2_5_vl_3b").vlm.architecture["vision_config"])
    vision.update(depth=depth, fullatt_block_indexes=list(range(7, depth, 8)) or [depth - 1])
    config = Qwen2_5_VLVisionConfig(**vision)
    config._attn_implementation = "sdpa"
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    plain = Qwen2_5_VisionTransformerPretrainedModel(config).to(args.device, dtype).eval()
    batched = copy.deepcopy(plain)
    layers = use_batched_vision_attention(batched)
    grid = torch.tensor([[1, 26, 46]] * args.views, device=args.device)
    patch = config.in_channels * config.temporal_patch_size * config.patch_size**2
    pixels = torch.randn(int(grid.prod(dim=1).sum()), patch, device=args.device, dtype=dtype)

    def run(model) -> tuple[float, torch.Tensor]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = model(pixels, grid_thw=grid)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, getattr(out, "pooler_output", out)

    run(plain), run(batched)  # warm-up
    samples: dict[str, list[float]] = {"per_window": [], "batched": []}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for name, model in (("per_window", plain), ("batched", batched)):
            seconds, outputs[name] = run(model)
            samples[name].append(seconds)
    reference, fast = outputs["per_window"].float(), outputs["batched"].float()
    metrics = {
        **percentiles_ms(samples["per_window"], "per_window"),
        **percentiles_ms(samples["batched"], "batched"),
        "batched_speedup": float(np.median(samples["per_window"]) / np.median(samples["batched"])),
        "max_relative_difference": float((reference - fast).abs().max() / reference.abs().max()),
    }
    config_out = {
        "depth": depth,
        "windowed_layers": depth - len(vision["fullatt_block_indexes"]),
        "patched_layers": layers,
        "views": args.views,
        "image": "640x360 (26x46 patches)",
        "repeats": repeats,
        "device": args.device,
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
    }
    emit("vision_attention", config_out, metrics, args.out)


if __name__ == "__main__":
    main()
