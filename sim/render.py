"""Five numpy pinhole cameras: four fixed views around the phantom and a tool camera riding on the needle.

The phantom is a box whose top face (z = 0) carries the five coloured target discs; it stands on a floor.
Fixed views ray-cast this static scene once per episode; per frame only the needle, its holder and its
shadow are drawn, lighting flickers and sensor noise is added, so a 5-view frame costs little. The tool
view (``view5``) moves with the needle, so it is ray-cast every frame (at the configured size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.constants import CAMERA_NAMES
from models.pose_math import rotvec_to_matrix
from sim.config import CameraConfig, SceneConfig
from sim.robot import needle_axis
from sim.scene import TARGET_RGB, Scene

_PHANTOM_RGB = np.array([205.0, 158.0, 148.0])
_FLOOR_RGB = np.array([92.0, 94.0, 100.0])
_BACKGROUND_RGB = np.array([38.0, 42.0, 52.0])
NEEDLE_RGB = np.array([200.0, 205.0, 212.0])
"""Colour of the needle shaft in every view (probes tell it apart from the White target with it)."""
_HOLDER_RGB = np.array([55.0, 58.0, 66.0])
_NEAR_MM = 5.0
_NEEDLE_RADIUS_MM = 0.45
_HOLDER_RADIUS_MM = 4.0
_HOLDER_LENGTH_MM = 25.0
# Tool camera mount in the tool frame (tip at the origin, needle along -z): beside and above the tip.
_TOOL_CAMERA_OFFSET_MM = np.array([28.0, 0.0, 48.0])
_TOOL_CAMERA_LOOK_MM = np.array([0.0, 0.0, -4.0])


@dataclass
class PinholeCamera:
    """A pinhole camera: world point X maps to pixel ``f * (R (X - c))_xy / (R (X - c))_z + (cx, cy)``."""

    position: np.ndarray
    rotation: np.ndarray
    """World-to-camera rotation; rows are the camera's right, down and forward axes."""
    focal_px: float
    width: int
    height: int

    @classmethod
    def look_at(
        cls, position: np.ndarray, target: np.ndarray, focal_px: float, width: int, height: int
    ) -> PinholeCamera:
        """Camera at ``position`` looking at ``target`` with world z up in the image."""
        forward = target - position
        forward = forward / np.linalg.norm(forward)
        up = np.array([0.0, 0.0, 1.0]) if abs(forward[2]) < 0.99 else np.array([0.0, 1.0, 0.0])
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        return cls(np.asarray(position, float), np.stack([right, down, forward]), focal_px, width, height)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points [m, 3] -> camera coordinates [m, 3]."""
        return (np.asarray(points, float) - self.position) @ self.rotation.T

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points [m, 3] -> pixel coordinates [m, 2] (points must lie in front of the camera)."""
        cam = self.to_camera(points)
        return self.focal_px * cam[:, :2] / cam[:, 2:3] + np.array([self.width / 2.0, self.height / 2.0])

    def ray_directions(self) -> np.ndarray:
        """Return unit world directions [H, W, 3] through the pixel centres."""
        u = (np.arange(self.width, dtype=np.float32) + 0.5 - self.width / 2.0) / self.focal_px
        v = (np.arange(self.height, dtype=np.float32) + 0.5 - self.height / 2.0) / self.focal_px
        cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((1, 1), np.float32)), axis=-1)
        world = cam @ self.rotation.astype(np.float32)
        return world / np.linalg.norm(world, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Lighting:
    """Per-episode light: direction towards the light, gain and colour tint."""

    direction: np.ndarray
    gain: float
    tint: np.ndarray


class CameraRig:
    """Renders the five views of one episode's scene."""

    def __init__(
        self,
        camera_cfg: CameraConfig,
        scene_cfg: SceneConfig,
        scene: Scene,
        rng: np.random.Generator,
        needle_length_mm: float = 40.0,
    ) -> None:
        self.cfg = camera_cfg
        self.needle_length_mm = needle_length_mm
        self.scene_cfg = scene_cfg
        self.scene = scene
        self._rng = rng
        width, height = camera_cfg.width, camera_cfg.height
        if width < 8 or height < 8:
            raise ValueError(f"camera images must be at least 8x8, got {width}x{height}")
        self.focal_px = (min(width, height) / 2.0) / np.tan(np.radians(camera_cfg.fov_deg) / 2.0)
        azimuth = np.radians(rng.uniform(0.0, 360.0))
        elevation = np.radians(rng.uniform(45.0, 75.0))
        self.lighting = Lighting(
            direction=np.array(
                [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
            ),
            gain=float(rng.uniform(*camera_cfg.light_gain_range)),
            tint=1.0 + rng.normal(0.0, 0.04, size=3),
        )
        self._phantom_rgb = _PHANTOM_RGB + rng.normal(0.0, 8.0, size=3)
        self._texture = (rng.uniform(0.05, 0.25, size=(3, 2)), rng.uniform(0, 2 * np.pi, size=3))
        self.cameras: dict[str, PinholeCamera] = {}
        for i, name in enumerate(CAMERA_NAMES[:4]):
            az = np.radians(45.0 + 90.0 * i + rng.uniform(-6.0, 6.0))
            el = np.radians(camera_cfg.side_elevation_deg + rng.uniform(-4.0, 4.0))
            distance = camera_cfg.side_distance_mm + rng.uniform(-1.0, 1.0) * camera_cfg.pose_jitter_mm
            look = np.array([0.0, 0.0, -2.0]) + rng.uniform(-1.0, 1.0, size=3) * camera_cfg.pose_jitter_mm
            position = look + distance * np.array(
                [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]
            )
            self.cameras[name] = PinholeCamera.look_at(position, look, self.focal_px, width, height)
        self._texel_mm = 0.1 if max(width, height) > 256 else 0.2
        self._surface = self._surface_texture()
        self._static = {name: self._ray_cast(camera) for name, camera in self.cameras.items()}
        pixels = width * height * 3
        self._noise_pool = rng.normal(0.0, camera_cfg.noise_std, size=2 * pixels).astype(np.float32)
        self._tool_rays: tuple[bytes, np.ndarray] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Camera names in model input order."""
        return CAMERA_NAMES

    def tool_camera(self, pose: np.ndarray) -> PinholeCamera:
        """Return the view5 camera for a needle pose (mounted on the tool)."""
        rot = rotvec_to_matrix(np.asarray(pose, float)[3:6])
        tip = np.asarray(pose, float)[0:3]
        return PinholeCamera.look_at(
            tip + rot @ _TOOL_CAMERA_OFFSET_MM,
            tip + rot @ _TOOL_CAMERA_LOOK_MM,
            self.focal_px,
            self.cfg.width,
            self.cfg.height,
        )

    def camera(self, name: str, pose: np.ndarray) -> PinholeCamera:
        """Camera ``name`` (the tool camera depends on the needle pose)."""
        if name == CAMERA_NAMES[4]:
            return self.tool_camera(pose)
        if name not in self.cameras:
            raise KeyError(f"unknown camera {name!r}; cameras are {CAMERA_NAMES}")
        return self.cameras[name]

    def render(
        self, pose: np.ndarray, names: tuple[str, ...] | None = None, phantom_shift_mm: Any = None
    ) -> dict[str, np.ndarray]:
        """Render the named views (default all five) for the needle at ``pose``: HxWx3 uint8 each.

        ``phantom_shift_mm`` (x, y) is how far tissue motion has moved the phantom; the views are then
        rendered in the phantom's frame (fixed cameras and needle moved the other way), which is exact for
        a phantom and floor translating together.
        """
        frames = {}
        shift = np.zeros(3) if phantom_shift_mm is None else np.array([*phantom_shift_mm, 0.0], float)
        moved = bool(shift.any())
        if moved:
            pose = np.asarray(pose, float).copy()
            pose[0:3] -= shift
        segments = self._needle_segments(pose)  # 3-D geometry shared by every view
        for name in names or CAMERA_NAMES:
            camera = self.camera(name, pose)
            if moved and name in self._static:
                camera = PinholeCamera(
                    camera.position - shift, camera.rotation, camera.focal_px, camera.width, camera.height
                )
                image = self._ray_cast(camera)
            elif name in self._static:
                image = self._static[name].copy()
            else:
                image = self._ray_cast(camera, self._rays(camera))
            for start, end, radius, rgb, opacity in segments:
                _draw_segment(image, camera, start, end, radius, rgb, opacity)
            gain = 1.0 + self.cfg.flicker_std * self._rng.standard_normal()
            size = image.size
            offset = int(self._rng.integers(0, self._noise_pool.size - size + 1))
            image *= np.float32(gain)
            image += self._noise_pool[offset : offset + size].reshape(image.shape)
            frames[name] = np.clip(image, 0.0, 255.0).astype(np.uint8)
        return frames

    def _rays(self, camera: PinholeCamera) -> np.ndarray:
        """Ray directions of the tool camera, reused while its orientation does not change."""
        key = camera.rotation.tobytes()
        if self._tool_rays is None or self._tool_rays[0] != key:
            self._tool_rays = (key, camera.ray_directions())
        return self._tool_rays[1]

    def _ray_cast(self, camera: PinholeCamera, directions: np.ndarray | None = None) -> np.ndarray:
        """Shaded image [H, W, 3] float32 of the static scene (phantom box, targets, floor, background)."""
        half = self.scene_cfg.phantom_half_size_mm
        origin = camera.position.astype(np.float32)
        if directions is None:
            directions = camera.ray_directions()
        image = np.empty(directions.shape, np.float32)
        # Cameras sit above the phantom, so a ray meeting the top face inside the square hits it first.
        down = directions[..., 2] < -1e-6
        t_top = np.where(down, -origin[2] / np.where(down, directions[..., 2], -1.0), -1.0)
        x = origin[0] + directions[..., 0] * t_top
        y = origin[1] + directions[..., 1] * t_top
        top = down & (t_top > 0) & (np.abs(x) <= half) & (np.abs(y) <= half)
        texel = self._texel_mm
        size = self._surface.shape[0]
        ix = np.clip(((x[top] + half) / texel).astype(np.intp), 0, size - 1)
        iy = np.clip(((y[top] + half) / texel).astype(np.intp), 0, size - 1)
        image[top] = self._surface[iy, ix]
        rest = ~top
        if rest.any():
            image[rest] = self._shade_rest(origin, directions[rest])
        return image

    def _shade_rest(self, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Colours [m, 3] of rays that miss the top face: phantom sides, floor or background."""
        half, depth = self.scene_cfg.phantom_half_size_mm, self.scene_cfg.phantom_height_mm
        safe = np.where(np.abs(direction) < 1e-9, np.float32(1e-9), direction)
        lo = np.array([-half, -half, -depth], np.float32)
        hi = np.array([half, half, 0.0], np.float32)
        t1, t2 = (lo - origin) / safe, (hi - origin) / safe
        t_entry = np.minimum(t1, t2)
        t_near = t_entry.max(axis=-1)
        hit_box = (t_near <= np.maximum(t1, t2).min(axis=-1)) & (t_near > 0)
        axis = t_entry.argmax(axis=-1)
        normal = np.zeros_like(direction)
        np.put_along_axis(
            normal, axis[:, None], -np.sign(np.take_along_axis(direction, axis[:, None], -1)), -1
        )
        hit_floor = ~hit_box & ((-depth - origin[2]) / safe[:, 2] > 0)
        normal[hit_floor] = (0.0, 0.0, 1.0)
        colour = np.broadcast_to(_BACKGROUND_RGB.astype(np.float32), direction.shape).copy()
        colour[hit_floor] = _FLOOR_RGB
        colour[hit_box] = self._phantom_rgb * 0.92
        lambert = np.clip(normal @ self.lighting.direction.astype(np.float32), 0.0, 1.0)
        shade = np.where(hit_box | hit_floor, 0.45 + 0.55 * lambert, 1.0)
        return colour * (shade[:, None] * self.lighting.gain * self.lighting.tint).astype(np.float32)

    def _surface_texture(self) -> np.ndarray:
        """Lit top-face texture [T, T, 3] float32: textured tissue with the anti-aliased target discs."""
        half, texel = self.scene_cfg.phantom_half_size_mm, self._texel_mm
        coords = -half + (np.arange(int(np.ceil(2 * half / texel))) + 0.5) * texel
        x, y = coords[None, :], coords[:, None]
        freq, phase = self._texture
        texture = 1.0 + 0.035 * sum(np.sin(freq[i, 0] * x + freq[i, 1] * y + phase[i]) for i in range(3))
        surface = (texture[..., None] * self._phantom_rgb).astype(np.float32)
        radius = self.scene_cfg.target_radius_mm
        reach = int(np.ceil((radius + 1.0) / texel))
        for name, xy in self.scene.targets_xy_mm.items():
            cx, cy = int((xy[0] + half) / texel), int((xy[1] + half) / texel)
            ys, xs = slice(max(cy - reach, 0), cy + reach), slice(max(cx - reach, 0), cx + reach)
            distance = np.hypot(coords[xs][None, :] - xy[0], coords[ys][:, None] - xy[1])
            alpha = np.clip((radius - distance) / 0.35 + 0.5, 0.0, 1.0)[..., None]
            rgb = np.asarray(TARGET_RGB[name], np.float32)
            surface[ys, xs] = surface[ys, xs] * (1.0 - alpha) + rgb * alpha
        light = self.lighting
        shade = 0.45 + 0.55 * max(float(light.direction[2]), 0.0)
        return surface * (shade * light.gain * light.tint).astype(np.float32)

    def _needle_segments(self, pose: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float, Any, float]]:
        """Return the cylinders to draw, back to front: shaft shadow, visible shaft, holder.

        Each is (start, end, radius mm, rgb or None for a shadow, opacity).
        """
        tip = np.asarray(pose, float)[0:3]
        up = -needle_axis(pose)
        top = tip + up * self.needle_length_mm
        holder_top = top + up * _HOLDER_LENGTH_MM
        light = self.lighting.direction
        segments: list[tuple[np.ndarray, np.ndarray, float, Any, float]] = []
        if light[2] > 0.05 and top[2] > 0:
            # Only the shaft's shadow: it tells the tip height, the holder's adds little.
            shadow = [p - light * (p[2] / light[2]) for p in (_above_surface(tip, top), top)]
            segments.append((shadow[0], shadow[1], _NEEDLE_RADIUS_MM * 1.5, None, 0.35))
        if top[2] > 0:
            segments.append((_above_surface(tip, top), top, _NEEDLE_RADIUS_MM, NEEDLE_RGB, 1.0))
        segments.append((top, holder_top, _HOLDER_RADIUS_MM, _HOLDER_RGB, 1.0))
        return segments


def _above_surface(tip: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Return the visible lower end of the shaft: the tip, or where it enters the surface."""
    if tip[2] >= 0 or top[2] <= tip[2]:
        return tip
    s = -tip[2] / (top[2] - tip[2])
    return tip + s * (top - tip)


def _draw_segment(
    image: np.ndarray,
    camera: PinholeCamera,
    start: np.ndarray,
    end: np.ndarray,
    radius_mm: float,
    rgb: np.ndarray | None,
    opacity: float,
) -> None:
    """Blend an anti-aliased 3-D cylinder (projected as a thick line) into ``image``; ``rgb=None`` darkens."""
    cam = camera.to_camera(np.stack([start, end]))
    if (cam[:, 2] < _NEAR_MM).all():
        return
    if (cam[:, 2] < _NEAR_MM).any():  # clip at the near plane
        s = (_NEAR_MM - cam[0, 2]) / (cam[1, 2] - cam[0, 2])
        clipped = cam[0] + s * (cam[1] - cam[0])
        cam = np.stack([clipped, cam[1]]) if cam[0, 2] < _NEAR_MM else np.stack([cam[0], clipped])
    pixels = camera.focal_px * cam[:, :2] / cam[:, 2:3] + np.array([camera.width / 2.0, camera.height / 2.0])
    radii = np.maximum(camera.focal_px * radius_mm / cam[:, 2], 0.6)
    (ua, va), (ub, vb) = pixels.tolist()
    reach = float(radii.max()) + 1.0
    x0, x1 = max(int(min(ua, ub) - reach), 0), min(int(max(ua, ub) + reach) + 1, camera.width)
    y0, y1 = max(int(min(va, vb) - reach), 0), min(int(max(va, vb) + reach) + 1, camera.height)
    if x0 >= x1 or y0 >= y1:
        return
    px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    a, b = pixels[0].astype(np.float32), pixels[1].astype(np.float32)
    ab = b - a
    denom = max(float(ab @ ab), 1e-6)
    s = np.clip(((px - a[0]) * ab[0] + (py - a[1]) * ab[1]) / denom, 0.0, 1.0)
    distance = np.hypot(px - (a[0] + s * ab[0]), py - (a[1] + s * ab[1]))
    radius = radii[0] + s * (radii[1] - radii[0])
    alpha = (np.clip(radius + 0.5 - distance, 0.0, 1.0) * opacity)[..., None]
    patch = image[y0:y1, x0:x1]
    if rgb is None:
        patch *= 1.0 - alpha
    else:
        # Cylinder shading: bright along the axis, darker towards the silhouette.
        across = np.clip(distance / np.maximum(radius, 1e-3), 0.0, 1.0)[..., None]
        colour = rgb.astype(np.float32) * (1.05 - 0.45 * across**2)
        patch *= 1.0 - alpha
        patch += alpha * colour
