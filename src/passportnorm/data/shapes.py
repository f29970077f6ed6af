"""Procedural 3D shapes sampled on their surfaces, with random pose, scale and noise.

Used by the ``shapes3d`` dataset (quick tests that need real geometry) and as a second source of
point clouds for trigger sets. Everything is drawn from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["SHAPES", "sample_shapes"]


def _mesh(vertices: list[tuple[float, float, float]], faces: list[tuple[int, int, int]]):
    return torch.tensor(vertices, dtype=torch.float32), torch.tensor(faces)


def _cube():
    v = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    quads = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
    return _mesh(v, [f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))])


def _pyramid():
    v = [(-1, -1, -1), (1, -1, -1), (1, 1, -1), (-1, 1, -1), (0, 0, 1)]
    return _mesh(v, [(0, 1, 2), (0, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)])


def _octahedron():
    v = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    return _mesh(v, [(a, b, c) for a in (0, 1) for b in (2, 3) for c in (4, 5)])


def _on_mesh(mesh, n: int, gen: torch.Generator) -> Tensor:
    """``n`` points uniform on a triangle mesh's area."""
    vertices, faces = mesh
    tri = vertices[faces]  # (F, 3, 3)
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1)
    pick = torch.multinomial(area, n, replacement=True, generator=gen)
    r1, r2 = torch.rand(n, 1, generator=gen).sqrt(), torch.rand(n, 1, generator=gen)
    a, b, c = tri[pick, 0], tri[pick, 1], tri[pick, 2]
    return (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c


def _on_sphere(n: int, gen: torch.Generator) -> Tensor:
    v = torch.randn(n, 3, generator=gen)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _cylinder_like(n: int, gen: torch.Generator, top_radius: float) -> Tensor:
    """Surface of a (truncated) cone of height 2, bottom radius 1, with its caps: cylinder or cone."""
    slant = math.hypot(2.0, 1.0 - top_radius)
    side, bottom, top = math.pi * (1 + top_radius) * slant, math.pi, math.pi * top_radius**2
    part = torch.multinomial(torch.tensor([side, bottom, top]), n, replacement=True, generator=gen)
    theta = 2 * math.pi * torch.rand(n, generator=gen)
    u = torch.rand(n, generator=gen)
    # side: radius shrinks linearly with height; area-uniform height via the inverse CDF of the radius
    if top_radius == 1.0:
        h = u
    else:
        h = (1 - torch.sqrt(1 - u * (1 - top_radius**2))) / (1 - top_radius)
    radius = torch.where(part == 0, 1 - h * (1 - top_radius), torch.sqrt(torch.rand(n, generator=gen)))
    radius = torch.where(part == 2, radius * top_radius, radius)
    z = torch.where(part == 0, 2 * h - 1, torch.where(part == 1, -1.0, 1.0))
    return torch.stack([radius * torch.cos(theta), radius * torch.sin(theta), z], dim=1)


def _torus(n: int, gen: torch.Generator, major: float = 1.0, minor: float = 0.35) -> Tensor:
    u = 2 * math.pi * torch.rand(n, generator=gen)
    # tube angle with density proportional to the local circumference (area-uniform)
    v = torch.empty(0)
    while v.numel() < n:
        cand = 2 * math.pi * torch.rand(2 * n, generator=gen)
        keep = torch.rand(2 * n, generator=gen) < (major + minor * torch.cos(cand)) / (major + minor)
        v = torch.cat([v, cand[keep]])
    v = v[:n]
    ring = major + minor * torch.cos(v)
    return torch.stack([ring * torch.cos(u), ring * torch.sin(u), minor * torch.sin(v)], dim=1)


def _capsule(n: int, gen: torch.Generator, radius: float = 0.5, half: float = 0.7) -> Tensor:
    side, caps = 2 * math.pi * radius * 2 * half, 4 * math.pi * radius**2
    on_side = torch.rand(n, generator=gen) < side / (side + caps)
    ball = radius * _on_sphere(n, gen)
    ball[:, 2] += torch.where(ball[:, 2] >= 0, half, -half)
    theta = 2 * math.pi * torch.rand(n, generator=gen)
    tube = torch.stack(
        [radius * torch.cos(theta), radius * torch.sin(theta), (2 * torch.rand(n, generator=gen) - 1) * half],
        1,
    )
    return torch.where(on_side[:, None], tube, ball)


SHAPES = {
    "sphere": _on_sphere,
    "cube": lambda n, g: _on_mesh(_cube(), n, g),
    "cylinder": lambda n, g: _cylinder_like(n, g, top_radius=1.0),
    "cone": lambda n, g: _cylinder_like(n, g, top_radius=0.0),
    "torus": _torus,
    "pyramid": lambda n, g: _on_mesh(_pyramid(), n, g),
    "octahedron": lambda n, g: _on_mesh(_octahedron(), n, g),
    "capsule": _capsule,
}


def _random_rotations(count: int, gen: torch.Generator) -> Tensor:
    """Uniform random rotations (QR of Gaussian matrices with the sign fixed)."""
    q, r = torch.linalg.qr(torch.randn(count, 3, 3, generator=gen))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    det = torch.linalg.det(q)
    q[:, :, 0] *= det.sign().unsqueeze(1)
    return q


def sample_shapes(
    labels: Tensor,
    points: int,
    gen: torch.Generator,
    noise: float = 0.02,
    scale: tuple[float, float] = (0.6, 1.0),
) -> Tensor:
    """One cloud ``(3, points)`` per label (an index into ``SHAPES``), randomly posed, scaled and jittered."""
    kinds = list(SHAPES.values())
    clouds = torch.empty(len(labels), points, 3)
    for kind in labels.unique().tolist():
        where = (labels == kind).nonzero().flatten()
        surface = kinds[kind](len(where) * points, gen).view(len(where), points, 3)
        clouds[where] = surface
    stretch = torch.empty(len(labels), 1, 3).uniform_(0.85, 1.15, generator=gen)
    size = torch.empty(len(labels), 1, 1).uniform_(*scale, generator=gen)
    clouds = torch.bmm(clouds * stretch * size, _random_rotations(len(labels), gen))
    clouds = clouds + noise * torch.randn(clouds.shape, generator=gen)
    return clouds.transpose(1, 2).contiguous()
