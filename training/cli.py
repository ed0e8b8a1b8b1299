"""``python -m training`` / ``insertion_vla_train``: stage0, stage1, stage2, build-cache, convert-bag/-legacy.

Training flags mirror :class:`training.config.TrainConfig` field by field (``--global-batch 32``,
``--no-resume``...); ``--config FILE`` (JSON or YAML) supplies defaults that flags override. Run the
training and build-cache commands under ``torchrun --nproc_per_node=N`` for DDP / sharded builds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contracts.constants import GRIPPER_DEFAULT
from training.config import TrainConfig


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON/YAML file of TrainConfig fields (flags override)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "stage":
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        doc = f"(default: {f.default if f.default is not dataclasses.MISSING else '[]'})"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=doc)
        elif "list[float]" in str(hint):
            parser.add_argument(flag, type=float, nargs="+", default=None, help=doc)
        elif "list[str]" in str(hint):
            parser.add_argument(flag, nargs="+", default=None, help=doc)
        else:
            base = int if "int" in str(hint) else float if "float" in str(hint) else str
            parser.add_argument(flag, type=base, default=None, help=doc)


def train_config_from_args(stage: int, args: argparse.Namespace) -> TrainConfig:
    """Merge ``--config`` file values and explicit flags into a :class:`TrainConfig`."""
    values: dict[str, Any] = {}
    if args.config is not None:
        text = args.config.read_text()
        if args.config.suffix in (".yaml", ".yml"):
            import yaml

            values.update(yaml.safe_load(text) or {})
        else:
            values.update(json.loads(text))
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    values["stage"] = stage
    return TrainConfig.from_dict(values).validate()


def _cmd_train(stage: int, args: argparse.Namespace) -> int:
    from training.feature_cache import CacheMissError
    from training.trainer import train

    try:
        result = train(train_config_from_args(stage, args))
    except CacheMissError as error:
        print(f"insertion_vla_train: error: {error}", file=sys.stderr)
        return 2
    if result.final_checkpoint is not None:
        print(f"final checkpoint: {result.final_checkpoint}")
    elif not result.finished:
        print(f"stopped at step {result.step} (resume with the same command)")
    return 0


def _add_stage0_flags(parser: argparse.ArgumentParser) -> None:
    from training.stage0 import Stage0Config

    parser.add_argument("--config", type=Path, help="JSON/YAML file of Stage0Config fields (flags override)")
    parser.add_argument(
        "--export-to", type=Path, default=None, help="also copy the finished model folder here"
    )
    hints = typing.get_type_hints(Stage0Config)
    for f in dataclasses.fields(Stage0Config):
        flag = "--" + f.name.replace("_", "-")
        hint = str(hints[f.name])
        doc = f"(default: {f.default})"
        if hints[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=doc)
        else:
            base = int if "int" in hint else float if "float" in hint else str
            parser.add_argument(flag, type=base, default=None, help=doc)


def _cmd_stage0(args: argparse.Namespace) -> int:
    import shutil

    from training.stage0 import Stage0Config, train_stage0

    values: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        values.update(yaml.safe_load(args.config.read_text()) or {})
    for f in dataclasses.fields(Stage0Config):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    model_dir = train_stage0(
        Stage0Config.from_dict(values), command=" ".join(["insertion_vla_train", *sys.argv[1:]])
    )
    if model_dir is None:
        print("stopped before the last step (resume with the same command)")
        return 0
    print(f"model: {model_dir}")
    if args.export_to is not None:
        shutil.rmtree(args.export_to, ignore_errors=True)
        shutil.copytree(model_dir, args.export_to)
        print(f"exported to {args.export_to}")
    return 0


def _cmd_build_cache(args: argparse.Namespace) -> int:
    from contracts.episode import list_episodes
    from models.checkpoint import load_checkpoint
    from models.config import load_model_config
    from models.policy import AsyncVLAPolicy
    from training.dataset import AlignmentConfig, open_episodes
    from training.distributed import barrier, init_distributed, shutdown
    from training.feature_cache import FeatureCache
    from training.features import build_cache
    from training.trainer import all_feature_refs

    info = init_distributed(args.device)
    try:
        if args.init_checkpoint:
            policy = load_checkpoint(args.init_checkpoint, device=info.device, load_vlm=True)
        else:
            policy = AsyncVLAPolicy(load_model_config(args.model), load_vlm=True, device=info.device)
        pcfg = policy.config
        align = AlignmentConfig(
            window=pcfg.sensor.window,
            horizon=pcfg.action_expert.horizon,
            dt_s=pcfg.action_period_s,
            reuse=pcfg.vlm_reuse_count,
        )
        episodes = open_episodes(list_episodes(args.data), align)
        by_name = {ep.name: ep for ep in episodes}
        cache = FeatureCache(args.cache_dir, policy.fingerprint, rank=info.rank)
        refs = all_feature_refs(episodes)
        built = build_cache(
            cache,
            refs,
            policy.extract_vl_features_batch,
            lambda r: by_name[r.episode].load_images(r),
            args.batch_size,
            info.rank,
            info.world,
            progress=info.is_main,
        )
        barrier(info)
        if info.is_main:
            cache.reload()
            print(
                f"feature cache {cache.directory}: {len(refs)} features needed, {built} computed by rank 0, "
                f"{len(cache.missing(refs))} missing, fingerprint {policy.fingerprint}"
            )
    finally:
        shutdown(info)
    return 0


def _cmd_convert_bag(args: argparse.Namespace) -> int:
    from training.convert_bag import BagOptions, convert_bags
    from training.episode_builder import CleaningPolicy

    options = BagOptions(
        cameras=None
        if args.cameras == ["auto"]
        else tuple(args.cameras)
        if args.cameras
        else BagOptions().cameras,
        sensor_topic=args.sensor_topic or BagOptions().sensor_topic,
        pose_topic=args.pose_topic or BagOptions().pose_topic,
        instruction_topic=args.instruction_topic or BagOptions().instruction_topic,
        instruction=args.instruction,
        gripper=args.gripper,
        msg_dir=args.msg_dir,
    )
    report = convert_bags(args.input, args.output, options, _policy(args, CleaningPolicy))
    print(report.summary())
    return 0 if report.converted else 1


def _cmd_convert_legacy(args: argparse.Namespace) -> int:
    from training.convert_legacy import LegacyOptions, convert_legacy, legacy_summary
    from training.episode_builder import CleaningPolicy

    options = LegacyOptions(
        views=tuple(args.views) if args.views else None,
        euler_convention=args.euler,
        pose_stamp_column=args.pose_stamp_column,
        time_unit=args.time_unit,
        gripper=args.gripper,
        layout=args.layout,
        task=args.task,
        task_verbatim=args.task_verbatim,
        zed_side=args.zed_side,
        sensor_rate_hz=args.sensor_rate_hz,
    )
    report = convert_legacy(args.input, args.output, options, _policy(args, CleaningPolicy))
    print(legacy_summary(report, options, args.input))
    return 0 if report.converted else 1


def _policy(args: argparse.Namespace, cls):
    return cls(min_duration_s=args.min_duration_s, max_nan_fraction=args.max_nan_fraction)


def _add_cleaning_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path, help="folder the episodes (and conversion_report.json) go to")
    parser.add_argument(
        "--min-duration-s", type=float, default=1.0, help="skip shorter episodes (default 1.0)"
    )
    parser.add_argument(
        "--max-nan-fraction", type=float, default=0.1, help="skip when more rows are non-finite (default 0.1)"
    )
    parser.add_argument(
        "--gripper",
        type=float,
        default=GRIPPER_DEFAULT,
        help=f"gripper value of every pose (default {GRIPPER_DEFAULT}, as the nodes assume)",
    )


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="insertion_vla_train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_stage0_flags(
        sub.add_parser(
            "stage0", help="Stage 0: pretrain the embedded VLM on labelled sim renders (grounding)"
        )
    )
    for stage in (1, 2):
        what = (
            "cached VL features, frozen VLM" if stage == 1 else "LoRA on the VLM, one VLM forward per R ticks"
        )
        _add_train_flags(sub.add_parser(f"stage{stage}", help=f"Stage {stage} training ({what})"))
    cache = sub.add_parser("build-cache", help="precompute the VL feature cache (shard with torchrun)")
    cache.add_argument("--data", type=Path, required=True)
    cache.add_argument("--cache-dir", type=Path, required=True)
    cache.add_argument("--model", default="tiny")
    cache.add_argument("--init-checkpoint", default=None, help="take the VLM (+ LoRA) from this checkpoint")
    cache.add_argument("--batch-size", type=int, default=8)
    cache.add_argument("--device", default="auto")
    bag = sub.add_parser("convert-bag", help="rosbag2 (sqlite3/MCAP) recordings -> episodes")
    _add_cleaning_flags(bag)
    bag.add_argument("--cameras", nargs="+", default=None, help="camera names in model order, or 'auto'")
    bag.add_argument("--sensor-topic", default=None)
    bag.add_argument("--pose-topic", default=None)
    bag.add_argument("--instruction-topic", default=None)
    bag.add_argument("--instruction", default=None, help="used when a bag has no instruction message")
    bag.add_argument("--msg-dir", type=Path, default=None, help="folder of insertion_vla_msgs *.msg files")
    from contracts.constants import SENSOR_RATE_HZ
    from training.legacy_options import DEFAULT_EULER, LAYOUTS, ZED_SIDES, euler_convention_arg

    legacy = sub.add_parser(
        "convert-legacy",
        help="the original recordings (v1 recv_all_*, v3 data_collection_*, v4 *.h5) -> episodes",
    )
    _add_cleaning_flags(legacy)
    legacy.add_argument(
        "--views", nargs="+", default=None, help="camera names in model order (default: View1..5; v4: all)"
    )
    legacy.add_argument(
        "--euler",
        type=euler_convention_arg,
        default=DEFAULT_EULER,
        help=f"Euler convention of the pose angles, e.g. intrinsic-XYZ or extrinsic-xyz "
        f"(default {DEFAULT_EULER}, the Meca500's)",
    )
    legacy.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS], help="force one layout")
    legacy.add_argument(
        "--task", default=None, help="task name for the instruction (default: from the folders)"
    )
    legacy.add_argument(
        "--task-verbatim", action="store_true", help="keep the folder name's underscores in the instruction"
    )
    legacy.add_argument(
        "--zed-side", default="left", choices=list(ZED_SIDES), help="v1 ZED stereo image to use"
    )
    legacy.add_argument(
        "--sensor-rate-hz",
        type=float,
        default=SENSOR_RATE_HZ,
        help=f"places v4 sensor samples whose stamps are float32 (default {SENSOR_RATE_HZ:g})",
    )
    legacy.add_argument("--pose-stamp-column", default="origin_timestamp")
    legacy.add_argument("--time-unit", default="auto", choices=["auto", "s", "ms", "us", "ns"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training`` and the ``insertion_vla_train`` console script."""
    args = make_parser().parse_args(argv)
    if args.command == "stage0":
        return _cmd_stage0(args)
    if args.command in ("stage1", "stage2"):
        return _cmd_train(int(args.command[-1]), args)
    if args.command == "build-cache":
        return _cmd_build_cache(args)
    if args.command == "convert-bag":
        return _cmd_convert_bag(args)
    return _cmd_convert_legacy(args)


if __name__ == "__main__":
    sys.exit(main())
