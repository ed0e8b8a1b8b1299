"""Stage 0 mechanics on a tiny budget: the grounding data, the loss falling, exact resume, DDP, the output.

The output is a Qwen2.5-VL folder that loads through ``from_pretrained`` like a downloaded one and serves
vlm_node; the shipped model's weights match its card (``test_builtin_model.py`` checks its accuracy).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sim.config import TARGET_COLOURS, RigConfig
from sim.demos import episode_seed
from sim.grounding import GroundingStream, scene_seed
from training.stage0 import CARD_JSON, MODEL_DIR, Stage0Config, file_sha256, train_stage0

REPO = Path(__file__).resolve().parent.parent
TINY = dict(
    steps=12,
    frames_per_step=2,
    frames_per_scene=2,
    scenes_per_block=2,
    eval_scenes=2,
    eval_frames_per_scene=2,
    eval_every=6,
    checkpoint_every=6,
    log_every=2,
    warmup_steps=2,
    lr=3e-3,
    progress=False,
)


def test_grounding_samples_label_every_colour_in_every_view():
    stream = GroundingStream(
        RigConfig().with_image_size(112, 112), seed=3, frames_per_scene=6, tilt_fraction=0.5
    )
    samples = stream.scene(0)
    again = GroundingStream(
        RigConfig().with_image_size(112, 112), seed=3, frames_per_scene=6, tilt_fraction=0.5
    )
    assert all(np.array_equal(a.images[4], b.images[4]) for a, b in zip(samples, again.scene(0)))  # seeded
    for sample in samples:
        assert len(sample.images) == 5 and sample.images[0].shape == (112, 112, 3)
        assert sample.offsets_mm.shape == (5, 2) and sample.pixels.shape == (5, 5, 2)
        assert sample.visible.shape == (5, 5) and sample.visible.any()
        assert sample.instructions() == [f"Perform {c}_point insertion task" for c in TARGET_COLOURS]
        # the instructed colour's pixel really shows that colour in the views where it is visible
        for colour in range(5):
            for view in np.flatnonzero(sample.visible[colour]):
                u, v = np.round(sample.pixels[colour, view]).astype(int)
                if 3 <= u < 109 and 3 <= v < 109:
                    patch = sample.images[view][v - 1 : v + 2, u - 1 : u + 2].reshape(-1, 3).astype(int)
                    from sim.scene import TARGET_RGB

                    distance = np.linalg.norm(patch - np.asarray(TARGET_RGB[TARGET_COLOURS[colour]]), axis=1)
                    if colour != 3:  # White can sit under the needle's highlight; the others never blend
                        assert distance.min() < 110, (colour, view, patch)
    assert {s.phase for s in stream.scene(1) + stream.scene(2) + samples} >= {"start", "approach", "aligned"}


def test_grounding_scenes_never_share_a_seed_with_demonstrations_or_probes():
    grounding = {scene_seed(s, i) for s in (0, 1) for i in range(2000)}
    demos = {episode_seed(s, i) for s in (0, 1000, 4242) for i in range(2000)}
    assert not grounding & demos


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stage0") / "run"
    model_dir = train_stage0(Stage0Config(out=str(out), **TINY), command="test")
    return out, model_dir


@pytest.mark.slow
def test_the_loss_falls_and_the_model_loads_like_a_downloaded_one(trained):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from models.grounding import load_grounding_head

    out, model_dir = trained
    history = json.loads((out / "history.json").read_text())["history"]
    losses = [v for _, v in history["train/loss"]]
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG" and any((out / "tensorboard").iterdir())
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, local_files_only=True)
    assert model.config.text_config.hidden_size == 128
    AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    head = load_grounding_head(model_dir)
    assert head.config.tokens_per_view == 16 and head.config.num_views == 5
    card = json.loads((model_dir / CARD_JSON).read_text())
    assert set(card["sha256"]) == {"model.safetensors", "grounding_head.safetensors"}
    for name, digest in card["sha256"].items():
        assert digest == file_sha256(model_dir / name), name
    assert card["steps"] == TINY["steps"] and card["config"]["eval_seed"] != card["config"]["seed"]
    assert {"median_mm", "p90_mm"} <= set(card["held_out"]) and card["wall_s"] > 0
    assert (model_dir / "MODEL_CARD.md").read_text().startswith("# tiny-sim")


@pytest.mark.slow
def test_resume_is_exact(trained, tmp_path):
    out, model_dir = trained
    resumed = tmp_path / "resumed"
    first = train_stage0(Stage0Config(out=str(resumed), stop_after=6, **TINY), command="test")
    assert first is None  # stopped, as if interrupted
    second = train_stage0(Stage0Config(out=str(resumed), **TINY), command="test")
    a = load_file(str(model_dir / "model.safetensors"))
    b = load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_torchrun_two_ranks_train_the_same_model(trained, tmp_path):
    out, model_dir = trained
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress"]
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "-m", "training", "stage0", "--out", str(tmp_path / "ddp"), "--no-progress", *flags,
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = load_file(str(model_dir / "model.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / MODEL_DIR / "model.safetensors"))
    # each rank takes half of every step's frames; averaging their gradients gives the single-process step
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-3, atol=2e-3, msg=key)
    assert json.loads((tmp_path / "ddp" / MODEL_DIR / CARD_JSON).read_text())["world_size"] == 2
