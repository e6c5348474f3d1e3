"""Checkpoints in the Hugging Face Hub layout: ``config.json`` + ``model.safetensors`` + ``README.md``.

A checkpoint is found as a local folder, as a Hub repo id through ``huggingface_hub`` (its cache, ``revision``,
``token``, ``local_files_only`` and ``HF_HUB_OFFLINE`` behave as everywhere else in the Hub ecosystem), or, with no
name, as the default VAE shipped with the package. Weights are read with safetensors only: no pickle is ever executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from idaa_transforms.vae import IdentityVAE, VAEConfig

__all__ = ["DEFAULT_CHECKPOINT", "CONFIG_FILE", "WEIGHTS_FILE", "default_checkpoint_dir", "load_vae", "write_checkpoint"]

DEFAULT_CHECKPOINT = "idaa-vae-photo32"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint could not be found or read; the message names the checkpoint, the file and the fix."""


def default_checkpoint_dir(name: str = DEFAULT_CHECKPOINT) -> Path:
    """Folder of a checkpoint shipped with the package (installed wheel, or the repository's ``weights/``)."""
    here = Path(__file__).resolve().parent
    for root in (here / "_weights", here.parent / "weights"):
        if (root / name / CONFIG_FILE).is_file():
            return root / name
    raise CheckpointError(
        f"The shipped checkpoint {name!r} is missing from {here / '_weights'} and {here.parent / 'weights'}; "
        "reinstall idaa_transforms, or pass a Hub repo id or a local folder."
    )


def _resolve_files(name: str, *, revision, cache_dir, force_download, local_files_only, token) -> tuple[Path, Path]:
    folder = Path(name).expanduser()
    if folder.is_dir():
        config, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config, weights):
            if not path.is_file():
                raise CheckpointError(
                    f"Checkpoint folder {str(folder)!r} has no {path.name}; a checkpoint folder holds "
                    f"{CONFIG_FILE} and {WEIGHTS_FILE} (write one with IdentityVAE.save_pretrained)."
                )
        return config, weights
    kwargs = dict(revision=revision, cache_dir=cache_dir, force_download=force_download,
                  local_files_only=local_files_only, token=token)
    paths = []
    for filename in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            paths.append(Path(hf_hub_download(name, filename, **kwargs)))
        except HFValidationError as err:
            raise CheckpointError(
                f"{name!r} is neither an existing local folder nor a valid Hub repo id ('org/name'): {err}"
            ) from None
        except RepositoryNotFoundError:
            raise CheckpointError(
                f"Hub repo {name!r} was not found (or is private: pass token=..., or log in with `hf auth login`)."
            ) from None
        except RevisionNotFoundError:
            raise CheckpointError(f"Hub repo {name!r} has no revision {revision!r}.") from None
        except LocalEntryNotFoundError:  # before EntryNotFoundError, its base class
            offline = local_files_only or constants.HF_HUB_OFFLINE
            why = "offline mode is on and it is not in the cache" if offline else "it could not be downloaded"
            raise CheckpointError(
                f"{filename} of Hub repo {name!r} is unavailable: {why}. Download it once with network access, "
                "or point to a local checkpoint folder."
            ) from None
        except EntryNotFoundError:
            raise CheckpointError(
                f"Hub repo {name!r} (revision {revision or 'main'}) has no file {filename}; "
                f"an idaa_transforms checkpoint holds {CONFIG_FILE} and {WEIGHTS_FILE}."
            ) from None
    return paths[0], paths[1]


def load_vae(
    name_or_path: str | Path | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
    map_location: str | torch.device = "cpu",
) -> IdentityVAE:
    """Load an :class:`IdentityVAE` checkpoint, in eval mode.

    Args:
        name_or_path: a local checkpoint folder, a Hub repo id (``"org/name"``), or ``None`` for the default
            shipped with the package (no network).
        revision, cache_dir, force_download, local_files_only, token: as in ``huggingface_hub.hf_hub_download``.
        map_location: device for the weights.

    Raises:
        CheckpointError: the checkpoint, a file in it, or its contents are missing or inconsistent.

    Example:
        >>> vae = load_vae()
        >>> vae.training
        False
    """
    if name_or_path is None:
        name_or_path = default_checkpoint_dir()
    name = str(name_or_path)
    config_path, weights_path = _resolve_files(name, revision=revision, cache_dir=cache_dir,
                                               force_download=force_download, local_files_only=local_files_only,
                                               token=token)
    try:
        values = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{name}: {CONFIG_FILE} is not valid JSON ({err}); re-save or re-download it.") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{name}: {CONFIG_FILE} must hold a JSON object, got {type(values).__name__}.")
    try:
        config = VAEConfig.from_dict(values, source=f"{name}/{CONFIG_FILE}")
    except (TypeError, ValueError) as err:
        raise CheckpointError(str(err) if name in str(err) else f"{name}/{CONFIG_FILE}: {err}") from None
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{name}: {WEIGHTS_FILE} is not a readable safetensors file ({err}); re-download it "
            "(force_download=True) or re-save the checkpoint."
        ) from None
    model = IdentityVAE(config)
    _check_state(model, state, f"{name}/{WEIGHTS_FILE}")
    model.load_state_dict(state)
    return model.to(map_location).eval()


def _check_state(model: IdentityVAE, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            details.append(f"shape mismatch {wrong[:5]}{' ...' if len(wrong) > 5 else ''}")
        raise CheckpointError(
            f"{source} does not match its {CONFIG_FILE}: {'; '.join(details)}. The config and the weights come "
            "from different models: re-save both together with IdentityVAE.save_pretrained."
        )


def write_checkpoint(model: IdentityVAE, folder: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` of ``model`` to ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "library": "idaa_transforms"})
    (folder / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; shipped weights must be readable by all
    return folder
