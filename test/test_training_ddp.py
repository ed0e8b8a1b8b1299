"""torchrun --nproc_per_node=2 (gloo, real torch.distributed) matches one process, same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.cli import main as cli_main
from training.fixtures import make_synthetic_dataset

REPO = Path(__file__).resolve().parent.parent
VAL = ["episode_001", "episode_004"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _args(root: Path, out: str, micro_batch: int) -> list[str]:
    return [
        "stage1",
        "--data",
        str(root / "data"),
        "--out",
        str(root / out),
        "--cache-dir",
        str(root / "cache"),
        "--cache-mode",
        "on",
        "--val-episodes",
        *VAL,
        "--steps",
        "6",
        "--global-batch",
        "8",
        "--micro-batch",
        str(micro_batch),
        "--val-every",
        "6",
        "--checkpoint-every",
        "3",
        "--log-every",
        "1",
        "--warmup-steps",
        "2",
        "--lr-sensor-encoder",
        "1e-3",
        "--lr-action-expert",
        "1e-3",
        "--no-progress",
    ]


@pytest.mark.slow
def test_torchrun_two_ranks_matches_single_process(tmp_path):
    torch.set_num_threads(1)
    make_synthetic_dataset(tmp_path / "data", num_episodes=6, duration_s=1.5)
    # Build the cache with the CLI (the single-process way), then train one process: global batch 8 as
    # 1 rank x 1 micro-batch of 8.
    assert (
        cli_main(["build-cache", "--data", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")])
        == 0
    )
    assert cli_main(_args(tmp_path, "single", micro_batch=8)) == 0
    # The same global batch as 2 ranks x 2 accumulated micro-batches of 2, in real torch.distributed (gloo).
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "training",
        *_args(tmp_path, "ddp", micro_batch=2),
    ]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    state = json.loads((tmp_path / "ddp" / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["world"] == 2
    assert (tmp_path / "ddp" / "checkpoints" / "step_00000006" / "rng-rank1.safetensors").is_file()
    single = load_file(str(tmp_path / "single" / "final" / "policy.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "final" / "policy.safetensors"))
    initial_gap = 0.0
    # Summation order differs between 2 ranks x 2 micro-batches and 1 x 8, so gradients agree to rounding.
    # Adam turns the rounding noise of gradients that are zero in exact arithmetic (attention key biases
    # do not change a softmax) into steps of up to lr = 1e-3, hence the absolute tolerance below one step.
    assert single.keys() == ddp.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-3, atol=5e-4, msg=key)
    exact = [k for k in single if torch.allclose(ddp[k], single[k], rtol=1e-5, atol=1e-6)]
    assert len(exact) > 0.8 * len(single)
    history = {
        name: json.loads((tmp_path / name / "history.json").read_text())["history"]
        for name in ("single", "ddp")
    }
    for a, b in zip(history["single"]["train/loss"], history["ddp"]["train/loss"]):
        assert a[0] == b[0] and a[1] == pytest.approx(b[1], rel=1e-5)
        initial_gap = max(initial_gap, abs(a[1] - history["single"]["train/loss"][0][1]))
    assert initial_gap > 1e-3  # the loss moved, so matching it is not trivial
    assert history["ddp"]["val/loss"][-1][1] == pytest.approx(history["single"]["val/loss"][-1][1], rel=1e-5)
