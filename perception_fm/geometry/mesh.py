"""Triangle meshes: decimation to a marker-friendly size and export (GLB / PLY / OBJ).

Decimation is quadric edge collapse (fast-simplification, the library PyVista uses); per-vertex colours
follow each kept vertex's nearest original vertex. Export goes through trimesh.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Mesh:
    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int32
    colors: np.ndarray | None = None  # (V, 3) uint8 RGB

    def transformed(self, matrix: np.ndarray, scale: np.ndarray | float = 1.0) -> "Mesh":
        """Vertices mapped by matrix @ (scale * v) (4x4 rigid matrix, per-axis or uniform scale)."""
        scaled = self.vertices * np.asarray(scale, dtype=np.float32)
        moved = scaled @ matrix[:3, :3].T.astype(np.float32) + matrix[:3, 3].astype(np.float32)
        return Mesh(moved.astype(np.float32), self.faces, self.colors)


def decimate(mesh: Mesh, max_faces: int) -> tuple[Mesh, np.ndarray]:
    """A mesh with at most `max_faces` faces, and for each of its vertices the index of the nearest original
    vertex (to carry colours, or to pose a fixed topology's later meshes without decimating again)."""
    from scipy.spatial import cKDTree

    if len(mesh.faces) <= max_faces:
        return mesh, np.arange(len(mesh.vertices))
    import fast_simplification

    ratio = 1.0 - max_faces / len(mesh.faces)
    points, faces = fast_simplification.simplify(np.asarray(mesh.vertices, np.float32),
                                                 np.asarray(mesh.faces, np.int32), target_reduction=ratio)
    _, source = cKDTree(mesh.vertices).query(points)
    colors = mesh.colors[source] if mesh.colors is not None else None
    return Mesh(points.astype(np.float32), faces.astype(np.int32), colors), source


def export_meshes(meshes: list[Mesh], path: str | Path) -> Path:
    """Write meshes (already in one frame) as one scene; the extension picks the format (.glb .ply .obj)."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in (".glb", ".ply", ".obj"):
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use .glb, .ply or .obj")
    parts = [trimesh.Trimesh(vertices=m.vertices, faces=m.faces, vertex_colors=m.colors, process=False)
             for m in meshes]
    if not parts:
        raise ValueError("no meshes to export")
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = trimesh.util.concatenate(parts) if path.suffix.lower() != ".glb" else trimesh.Scene(parts)
    scene.export(str(path))
    return path
