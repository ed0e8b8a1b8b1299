"""Training throughput (samples/s) of the real trainer step: the cache and VL-feature reuse are the point.

- ``stage1_cached_samples_per_s``: Stage 1 with VL features from the feature cache;
- ``stage1_live_samples_per_s``: Stage 1 computing every sample's VL feature with the (frozen) VLM;
- ``stage2_r1_samples_per_s``: Stage 2 (LoRA) with one VLM forward per sample (R = 1);
- ``stage2_r17_samples_per_s``: Stage 2 with one VLM forward per group of R = 17 ticks.

Every configuration runs ``training.trainer.Trainer.train_step`` on the same number of samples per step
(17), data loading and JPEG decoding included, after one warm-up step. Tiny model on CPU by default;
``--model qwen2_5_vl_3b --random-weights --device cuda`` runs the 3B architecture with random weights.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, emit, percentiles_ms  # noqa: E402

from models.config import PolicyConfig, load_model_config  # noqa: E402
from models.policy import AsyncVLAPolicy  # noqa: E402
from models.vlm import VLFeatureExtractor, resolve_attn_implementation, torch_dtype  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.distributed import DistInfo  # noqa: E402
from training.fixtures import make_synthetic_dataset  # noqa: E402
from training.trainer import Trainer  # noqa: E402

SAMPLES_PER_STEP = 17


def build_policy(cfg: PolicyConfig, random_weights: bool, device: torch.device) -> AsyncVLAPolicy:
    """Policy with its VLM: from disk (tiny builds locally), or the architecture with random weights."""
    policy = AsyncVLAPolicy(cfg, device=device)
    if not random_weights:
        policy.attach_vlm(device=device)
        return policy
    from models.tiny_qwen import TINY_ARCHITECTURE, build_random_qwen2_5_vl

    model, processor, tokenizer = build_random_qwen2_5_vl(
        cfg.vlm.architecture or TINY_ARCHITECTURE,
        dtype=torch_dtype(cfg.vlm.dtype),
        device=device,
        attn_implementation=resolve_attn_implementation(cfg.vlm.attn_implementation, device),
    )
    if processor is None:
        from transformers import Qwen2VLImageProcessorPil

        extractor = VLFeatureExtractor(
            model, cfg.vlm, tokenizer=tokenizer, image_processor=Qwen2VLImageProcessorPil()
        )
    else:
        extractor = VLFeatureExtractor(model, cfg.vlm, processor=processor)
    policy.attach_vlm(extractor=extractor, device=device)
    return policy


def measure(trainer: Trainer, steps: int) -> tuple[float, list[float]]:
    """Samples/s over ``steps`` timed optimizer steps (after one warm-up step) and per-step seconds."""
    iterator = iter(trainer.loader())
    sync = torch.cuda.synchronize if trainer.info.device.type == "cuda" else (lambda: None)
    trainer.train_step([next(iterator) for _ in range(trainer.accum)])
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step([next(iterator) for _ in range(trainer.accum)])
        sync()
        times.append(time.perf_counter() - start)
    return SAMPLES_PER_STEP * len(times) / sum(times), times


def plot(metrics: dict[str, float], out: Path) -> None:
    """Bar chart of the four throughputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in metrics if k.endswith("_samples_per_s")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([k.removesuffix("_samples_per_s") for k in keys], [metrics[k] for k in keys], color="tab:blue")
    ax.set_ylabel("samples / s")
    ax.set_title("training throughput")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "training_throughput.png", dpi=90)
    plt.close(fig)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model config name or YAML (default tiny)")
    parser.add_argument(
        "--random-weights", action="store_true", help="build vlm.architecture, random weights"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    args = parser.parse_args()
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:  # one thread: stable numbers on a shared CPU (2 threads thrash under load)
        torch.set_num_threads(threads)
    steps = args.steps or (3 if args.quick else 10)
    device = torch.device(args.device)
    cfg = load_model_config(args.model)
    policy = build_policy(cfg, args.random_weights, device)
    size = min(cfg.vlm.image_height, cfg.vlm.image_width)
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="training_throughput-") as tmp:
        root = Path(tmp)
        make_synthetic_dataset(
            root / "data",
            num_episodes=1 if args.quick else 2,
            duration_s=2.5,
            image_size=size,
            channels=cfg.sensor.channels,
        )
        info = DistInfo(device=device)
        common = dict(
            data=str(root / "data"),
            val_fraction=0.0,
            steps=1000,
            warmup_steps=1,
            progress=False,
            global_batch=SAMPLES_PER_STEP,
            micro_batch=SAMPLES_PER_STEP,
            cache_dir=str(root / "cache"),
            device=args.device,
            resume=False,
            log_every=1000,
            val_every=1000,
            checkpoint_every=1000,
        )
        runs = [
            ("stage1_cached", 1, "build", 17, {}),
            ("stage1_live", 1, "off", 17, {}),
            ("stage2_r1", 2, "off", 1, {}),
            ("stage2_r17", 2, "off", 17, {"global_batch": 1, "micro_batch": 1}),
        ]
        for name, stage, cache_mode, reuse, extra in runs:
            policy.config.vlm_reuse_count = reuse
            run_cfg = TrainConfig(
                stage=stage, cache_mode=cache_mode, out=str(root / name), **{**common, **extra}
            )
            trainer = Trainer(run_cfg, info=info, policy=policy)
            rate, times = measure(trainer, steps)
            trainer.log.close()
            metrics[f"{name}_samples_per_s"] = rate
            metrics.update(percentiles_ms(times, f"{name}_step"))
    metrics["stage1_cache_speedup"] = (
        metrics["stage1_cached_samples_per_s"] / metrics["stage1_live_samples_per_s"]
    )
    metrics["stage2_reuse_speedup"] = metrics["stage2_r17_samples_per_s"] / metrics["stage2_r1_samples_per_s"]
    config = {
        "model": args.model,
        "random_weights": args.random_weights,
        "device": args.device,
        "steps": steps,
        "samples_per_step": SAMPLES_PER_STEP,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    if args.out is not None:
        plot(metrics, args.out)
    emit("training_throughput", config, metrics, args.out)


if __name__ == "__main__":
    main()
