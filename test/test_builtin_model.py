"""The shipped embedded default (``builtin:tiny-sim``): intact, loadable, and its features find the target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.config import load_model_config
from models.vlm import BUILTIN_DIR, resolve_model_path
from training.stage0 import CARD_JSON, file_sha256

ROOT = Path(__file__).resolve().parent.parent
MODEL = BUILTIN_DIR / "tiny-sim"
PROBE_BOUND_MM = (1.25, 2.5)
"""Median and p90 bounds of the CI-sized probe (a few hundred pairs; the README's 200-episode probe is the
target). Loose enough for a small sample, far below the 14-16 mm of a random-weight VLM."""


def test_the_embedded_default_is_the_shipped_model_and_matches_its_card():
    config = load_model_config("tiny_sim")
    assert Path(resolve_model_path(config.vlm.model_name_or_path)) == MODEL
    card = json.loads((MODEL / CARD_JSON).read_text())
    assert set(card["sha256"]) == {"model.safetensors", "grounding_head.safetensors"}
    for name, digest in card["sha256"].items():
        assert file_sha256(MODEL / name) == digest, f"{name} differs from its model card"
    size = sum(f.stat().st_size for f in MODEL.iterdir() if f.is_file())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MB"
    assert card["config"]["eval_seed"] != card["config"]["seed"]
    assert card["held_out"]["median_mm"] < 1.0


def test_it_loads_like_a_downloaded_qwen2_5_vl():
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(MODEL, local_files_only=True)
    assert model.config.model_type == "qwen2_5_vl"
    AutoProcessor.from_pretrained(MODEL, local_files_only=True)


@pytest.mark.slow
def test_its_grounding_head_finds_the_target_on_unseen_scenes(tmp_path):
    out = tmp_path / "probe.json"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "vision_probe.py"),
        "--episodes",
        "15",
        "--seed",
        "5151",
    ]
    subprocess.run([*command, "--approach-frames", "2", "--out", str(out)], check=True, cwd=ROOT, timeout=600)
    report = json.loads(out.read_text())
    assert report["pairs"] == 15 * 3 * 5
    assert report["vl_probe_median_mm"] <= PROBE_BOUND_MM[0], report
    assert report["vl_probe_p90_mm"] <= PROBE_BOUND_MM[1], report
    assert report["mean_guess_median_mm"] > 5 * report["vl_probe_median_mm"]
