"""CUDA graphs for the action expert's per-tick work at fixed batch-1 shapes.

A tick runs the sensor encoder, the context encoder and the head: dozens of small kernels whose launch
overhead dominates on a GPU. ``GraphedActionHead`` captures them once into a ``torch.cuda.CUDAGraph``
with static input buffers; each tick copies the new inputs into the buffers and replays the graph. The
cacheable VL resampling (``AsyncVLAPolicy.encode_vl_features``) runs once per feature, outside the graph.
Input checks (shapes, finiteness) stay with the caller: the graph cannot validate anything.
"""

from __future__ import annotations

import torch

from models.action_expert import MOTION_DIM
from models.policy import AsyncVLAPolicy


class GraphedActionHead:
    """Batch-1 action expert tick replayed from a CUDA graph (see module docstring)."""

    def __init__(self, policy: AsyncVLAPolicy, stream: torch.cuda.Stream | None = None, warmup: int = 3):
        device = policy.device
        if device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need the policy on a CUDA device, it is on {device}")
        policy.eval()
        self.policy = policy
        cfg = policy.config
        ae = cfg.action_expert
        self.latents = torch.zeros(1, ae.encoded_vl_tokens, ae.d_model, device=device)
        self.window = torch.zeros(1, cfg.sensor.window, cfg.sensor.channels, device=device)
        self.age = torch.zeros(1, device=device)
        self.state = torch.zeros(1, ae.state_dim, device=device) if ae.state_dim else None
        self.motion = torch.zeros(1, MOTION_DIM, device=device) if ae.motion_input else None
        self.stream = stream if stream is not None else torch.cuda.Stream(device=device)
        self.stream.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(self.stream):
            for _ in range(warmup):  # builds cuBLAS handles and lazy state outside the capture
                policy.head_forward(self.latents, self.window, self.age, self.state, self.motion)
        torch.cuda.current_stream(device).wait_stream(self.stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph, stream=self.stream):
            self.output = policy.head_forward(self.latents, self.window, self.age, self.state, self.motion)

    @torch.no_grad()
    def __call__(
        self,
        latents: torch.Tensor,
        window: torch.Tensor,
        age_s: torch.Tensor | float,
        robot_state: torch.Tensor | None = None,
        motion: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[1, L, d]`` latents, ``[1, W, C]`` window, age -> ``[1, H, D]`` (a copy, safe to keep).

        ``robot_state`` is the measured pose (policies with state input), ``motion`` the pose change since
        the features' capture (policies with motion input).
        """
        state = self.policy.normalized_state(robot_state, 1)
        moved = self.policy.normalized_motion(motion, 1)
        return self.replay(latents, window, torch.as_tensor(age_s, dtype=torch.float32), state, moved)

    @torch.no_grad()
    def replay(
        self,
        latents: torch.Tensor,
        window: torch.Tensor,
        age_s: torch.Tensor,
        state: torch.Tensor | None,
        motion: torch.Tensor | None,
    ) -> torch.Tensor:
        """Replay with inputs already checked and normalised (``AsyncVLAPolicy.head_forward``'s arguments)."""
        with torch.cuda.stream(self.stream):
            if state is not None:
                self.state.copy_(state, non_blocking=True)
            if motion is not None:
                self.motion.copy_(motion, non_blocking=True)
            self.latents.copy_(latents, non_blocking=True)
            self.window.copy_(window, non_blocking=True)
            self.age.copy_(age_s.reshape(1), non_blocking=True)
            self.graph.replay()
            result = self.output.clone()
        self.stream.synchronize()
        return result


def tick_runner(policy: AsyncVLAPolicy, cuda_graphs: bool, high_priority_stream: bool):
    """The per-tick head for ``AsyncVLAPolicy.set_tick_runner`` (``None``: the plain ``head_forward``).

    ``cuda_graphs`` replays batch-1 ticks from a CUDA graph; ``high_priority_stream`` runs them on the
    highest-priority stream (``models.fast_path.action_stream``), so queued VLM kernels do not delay them.
    Both need the policy on a CUDA device.
    """
    if not (cuda_graphs or high_priority_stream):
        return None
    from models.fast_path import action_stream

    stream = action_stream(policy.device) if high_priority_stream else None
    if cuda_graphs:
        return GraphedActionHead(policy, stream=stream).replay

    def on_stream(latents, window, age_s, state, motion):
        with torch.cuda.stream(stream):
            out = policy.head_forward(latents, window, age_s, state, motion)
        stream.synchronize()
        return out

    return on_stream
