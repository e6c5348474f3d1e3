"""The matched pixel FGSM budget: IDAA's perturbation measured once on training views, and the pictures of both.

Example:
    >>> record = Calibration(pixel_eps=0.02, images=256, seed=0, eps=0.1, idaa_l2=1.3, eps0_l2=1e-4, fgsm_l2=1.3,
    ...                      idaa_linf=0.3, fgsm_linf=0.02, settings={})
    >>> Calibration.from_dict(record.to_dict()) == record
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from idaa_transforms.data import to_float_images
from idaa_transforms.pixel_fgsm import matched_pixel_eps
from idaa_transforms.views import simclr_views
from idaa_transforms.trainers.config import TrainConfig
from idaa_transforms.trainers.engine import build_adversary, build_model, load_split

__all__ = ["Calibration", "CALIBRATION_SETTINGS", "calibrate"]

#: Settings the matched pixel eps depends on; a saved calibration is reused only if they are unchanged.
CALIBRATION_SETTINGS = ("method", "dataset", "subset", "crops_per_photo", "image_size", "arch", "vae", "eps",
                        "attack_steps", "temperature", "dual_bn", "proj_hidden", "proj_dim")
INPUTS = "SimCLR training views of random training images, attacked with a fresh encoder as in a training step"


@dataclass
class Calibration:
    """The matched ``pixel_eps`` and the mean L2 / max L-inf perturbations it was matched on (``[0, 1]`` pixels)."""

    pixel_eps: float
    images: int
    seed: int
    eps: float
    idaa_l2: float
    eps0_l2: float
    fgsm_l2: float
    idaa_linf: float
    fgsm_linf: float
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def settings_of(base: TrainConfig, images: int) -> dict[str, Any]:
    """What a calibration depends on (compared before a saved one is reused)."""
    return {k: getattr(base, k) for k in CALIBRATION_SETTINGS} | {"images": images}


@torch.no_grad()
def calibrate(base: TrainConfig, n_images: int = 256, seed: int = 0) -> tuple[Calibration, dict[str, Tensor]]:
    """Measure IDAA's perturbation on training views with a fresh encoder; the matched pixel FGSM ``eps``.

    Returns the calibration and the rows of the views picture (``x, reconstruction, residual, idaa, fgsm`` for 8
    raw training images, attacked as one batch).
    """
    device = torch.device(base.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images, _ = load_split(base, train=True)
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n_images]
    x = to_float_images(images[pick].to(device))
    torch.manual_seed(seed)
    with_idaa = dataclasses.replace(base, idaa=True, adversary="idaa")
    model = build_model(with_idaa).to(device).train()  # a throw-away model: its BatchNorm statistics may move

    def attack(adversary, inputs: Tensor) -> Tensor:
        return model.adversarial_view(adversary, inputs, model(inputs))

    idaa, idaa0 = build_adversary(with_idaa, model, device), build_adversary(with_idaa, model, device, eps=0.0)
    views = simclr_views(base.image_size)(x)  # what the attack sees in training
    x_adv, x_adv0 = attack(idaa, views), attack(idaa0, views)
    pixel_eps = matched_pixel_eps(views, x_adv)
    fgsm = build_adversary(dataclasses.replace(with_idaa, adversary="pixel_fgsm"), model, device, pixel_eps=pixel_eps)
    x_fgsm = attack(fgsm, views)

    def l2(a: Tensor, b: Tensor) -> float:
        return float((a - b).flatten(1).norm(dim=1).mean())

    record = Calibration(pixel_eps=pixel_eps, images=int(x.shape[0]), seed=seed, eps=base.eps,
                         idaa_l2=l2(x_adv, views), eps0_l2=l2(x_adv0, views), fgsm_l2=l2(x_fgsm, views),
                         idaa_linf=float((x_adv - views).abs().amax()),
                         fgsm_linf=float((x_fgsm - views).abs().amax()), settings=settings_of(base, n_images))
    reconstruction, residual, _ = idaa.decompose(x)
    raw_idaa, raw_fgsm = attack(idaa, x), attack(fgsm, x)
    index = torch.linspace(0, x.shape[0] - 1, min(8, x.shape[0])).long()
    rows = {"x": x, "reconstruction": reconstruction, "residual": residual, "idaa": raw_idaa, "fgsm": raw_fgsm}
    return record, {k: v[index].float().cpu() for k, v in rows.items()}
