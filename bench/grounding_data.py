"""Stage 0's data: how fast ``sim.grounding`` renders labelled five-view frames on this machine.

One process renders ``--scenes`` seeded scenes of ``--frames-per-scene`` frames at the embedded default's
112x112 views (Stage 0's settings), as Stage 0 streams them instead of writing shards: compare
``frames_per_s`` (one frame = five views plus labels for all five colours, i.e. five instructed training
pairs) with a Stage 0 run's ``train/frames_per_s`` to see whether rendering or training bounds it.
``frame_amortised_*``: a scene's time (its cameras' ray casts included) over its frames.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, emit, percentiles_ms  # noqa: E402


def main() -> None:
    """Render the scenes, time each frame, emit the JSON."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=None, help="scenes to render (default 24; quick 6)")
    parser.add_argument("--frames-per-scene", type=int, default=8)
    args = parser.parse_args()
    scenes = args.scenes or (6 if args.quick else 24)

    from sim.config import RigConfig
    from sim.grounding import GroundingStream
    from training.stage0 import Stage0Config

    stage0 = Stage0Config()
    stream = GroundingStream(
        RigConfig().with_image_size(112, 112),
        seed=stage0.seed,
        frames_per_scene=args.frames_per_scene,
        tilt_fraction=stage0.tilt_fraction,
    )
    stream.scene(0)  # warm-up (imports, allocations)
    per_scene = []
    started = time.perf_counter()
    for index in range(1, scenes + 1):
        t0 = time.perf_counter()
        samples = stream.scene(index)
        per_scene.append(time.perf_counter() - t0)
        assert len(samples) == args.frames_per_scene
    wall = time.perf_counter() - started
    frames = scenes * args.frames_per_scene
    per_frame = [s / args.frames_per_scene for s in per_scene]
    metrics = {"frames_per_s": frames / wall, "frames": frames, "wall_s": wall}
    metrics |= percentiles_ms(per_frame, "frame_amortised")
    config = {"scenes": scenes, "frames_per_scene": args.frames_per_scene, "image_size": [112, 112]}
    emit("grounding_data", config, metrics, args.out)


if __name__ == "__main__":
    main()
