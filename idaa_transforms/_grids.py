"""Pictures of what the VAE and the adversaries do: labelled rows of images (x, G(x), R(x), x_adv, ...) in one PNG.

One drawing function, :func:`save_image_rows`, for every such picture (the trainers' ``idaa_grid.png``, the
comparison's ``views_grid.png``, the VAE trainer's reconstruction grid); :func:`decomposition_rows` builds the usual
rows from a decomposition and an adversarial view.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> x = torch.rand(4, 3, 32, 32)
    >>> rows = decomposition_rows(x, x * 0.9, x * 0.1, x_adv=x.flip(0))
    >>> [label for label, _ in rows]
    ['x', 'G(x)', 'R(x) x4', 'x_adv', '|x_adv - x|']
    >>> path = Path(tempfile.mkdtemp()) / "grid.png"
    >>> save_image_rows(rows, path)
    >>> path.stat().st_size > 0
    True
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from idaa_transforms._files import atomic_write_bytes

__all__ = ["decomposition_rows", "save_image_rows"]

Row = tuple[str, Tensor]


def decomposition_rows(x: Tensor, reconstruction: Tensor | None = None, residual: Tensor | None = None, *,
                       x_adv: Tensor | None = None, name: str = "x_adv") -> list[Row]:
    """Rows ``x``, ``G(x)``, ``R(x)`` (x4 around grey), ``x_adv`` and ``|x_adv - x|`` scaled to its maximum.

    Any of ``reconstruction``/``residual``/``x_adv`` may be ``None`` (that row is left out); ``name`` labels the
    adversarial rows (``"IDAA x_adv"``...).
    """
    rows: list[Row] = [("x", x)]
    if reconstruction is not None:
        rows.append(("G(x)", reconstruction))
    if residual is not None:
        rows.append(("R(x) x4", residual * 4 + 0.5))
    if x_adv is not None:
        diff = (x_adv - x).abs()
        rows += [(name, x_adv), (f"|{name} - x|", diff / diff.amax().clamp_min(1e-8))]
    return rows


def save_image_rows(rows: Sequence[Row], path: str | Path, *, title: str | None = None, min_side: int = 96,
                    labels: bool = True) -> None:
    """Write ``rows`` (each ``(label, (B, C, H, W) images in [0, 1])``, the same ``B, H, W``) as one PNG, atomically.

    Small images are enlarged (nearest) to at least ``min_side`` pixels so that the picture is readable; each row
    gets its label in a left margin (``labels=False``: no margin), and ``title`` a line on top.

    Raises:
        ValueError: no rows, or rows of different shapes.
    """
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    if not rows:
        raise ValueError("save_image_rows: expected at least one row, got none.")
    shapes = {tuple(images.shape[:1]) + tuple(images.shape[2:]) for _, images in rows}
    if len(shapes) != 1:
        raise ValueError(f"save_image_rows: every row needs the same (B, H, W), got {sorted(shapes)}.")
    images = torch.cat([r.detach().float().clamp(0, 1).cpu().expand(-1, 3, -1, -1) if r.shape[1] == 1
                        else r.detach().float().clamp(0, 1).cpu() for _, r in rows])
    side = images.shape[-1]
    if side < min_side:
        images = torch.nn.functional.interpolate(images, scale_factor=-(-min_side // side), mode="nearest")
    count = rows[0][1].shape[0]
    strip = make_grid(images, nrow=count, padding=2, pad_value=1.0)
    picture = Image.fromarray(strip.mul(255).round().byte().permute(1, 2, 0).numpy())
    margin = 7 * max(len(label) for label, _ in rows) + 10 if labels else 0
    top = 18 if title else 0
    canvas = Image.new("RGB", (picture.width + margin, picture.height + top), "white")
    canvas.paste(picture, (margin, top))
    draw = ImageDraw.Draw(canvas)
    row_height = (picture.height - 2) / len(rows)
    if labels:
        for i, (label, _) in enumerate(rows):
            draw.text((4, top + 2 + row_height * (i + 0.5) - 5), label, fill="black")
    if title:
        draw.text((4, 3), title, fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
