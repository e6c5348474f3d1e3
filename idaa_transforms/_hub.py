"""Checkpoint folders in the Hugging Face Hub layout, for any model: find them, read and write their files.

A checkpoint is a folder holding ``config.json`` (the model's settings), ``model.safetensors`` (its tensors) and
``README.md`` (its model card). It is found as a local folder, or as a Hub repo id through ``huggingface_hub`` (its
cache, ``revision``, ``token``, ``local_files_only`` and ``HF_HUB_OFFLINE`` behave as everywhere else in the Hub
ecosystem), or as a folder shipped with the package. This module knows files, not models: a model's
``from_pretrained`` and ``save_pretrained`` call down into it, never the reverse.

Weights are read with safetensors only: no pickle is ever executed, and there is no fallback that would. Every file is
written through a temporary file and a rename (:mod:`idaa_transforms._files`), so an interrupted save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCardData, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from idaa_transforms._files import atomic_write_bytes, atomic_write_text

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CARD_FILE",
    "LIBRARY_NAME",
    "CheckpointError",
    "HubOptions",
    "shipped_checkpoint_dir",
    "find_checkpoint",
    "read_config",
    "write_config",
    "load_weights",
    "save_weights",
    "check_state_dict",
    "write_model_card",
    "push_to_hub",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
LIBRARY_NAME = "idaa_transforms"


class CheckpointError(ValueError):
    """A checkpoint could not be found, read or written; the message names the checkpoint, the file and the fix."""


# -- the options of every from_pretrained --------------------------------------------------------------------------
@dataclass(frozen=True)
class HubOptions:
    """How a checkpoint is looked up and loaded: the keyword arguments that every ``from_pretrained`` accepts.

    They are declared here once; ``from_pretrained`` methods take them as ``**hub_options`` and validate them by
    building this object.

    Args:
        revision: branch, tag or commit of a Hub repo (default: its ``main``).
        cache_dir: the Hub cache folder (default: huggingface_hub's, ``HF_HUB_CACHE``).
        force_download: download the files again even when they are cached.
        local_files_only: never use the network, only the cache (as ``HF_HUB_OFFLINE=1`` does).
        token: a Hub token for private or gated repos; ``True`` or ``None`` use the stored login.
        map_location: the device the model is loaded to (kept as a :class:`torch.device`).

    Raises:
        TypeError: an option has the wrong type, or a keyword is not one of these.
        ValueError: ``map_location`` names no device, or one this machine does not have.

    Example:
        >>> HubOptions.split({"revision": "v1", "eps": 0.1})
        ({'revision': 'v1'}, {'eps': 0.1})
        >>> HubOptions(map_location="cpu").map_location
        device(type='cpu')
    """

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    force_download: bool = False
    local_files_only: bool = False
    token: str | bool | None = None
    map_location: str | torch.device = "cpu"

    def __post_init__(self) -> None:
        checks = {
            "revision": (self.revision is None or isinstance(self.revision, str), "a str or None"),
            "cache_dir": (self.cache_dir is None or isinstance(self.cache_dir, (str, os.PathLike)),
                          "a folder path or None"),
            "force_download": (isinstance(self.force_download, bool), "True or False"),
            "local_files_only": (isinstance(self.local_files_only, bool), "True or False"),
            "token": (self.token is None or isinstance(self.token, (str, bool)), "a str, a bool or None"),
            "map_location": (isinstance(self.map_location, (str, torch.device)), "a device such as 'cpu' or 'cuda'"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise TypeError(f"{name}: expected {expected}, got {getattr(self, name)!r}.")
        object.__setattr__(self, "map_location", _available_device(self.map_location))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The keyword names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any], caller: str) -> HubOptions:
        """Build the options from ``caller``'s ``**hub_options``, naming ``caller`` if a keyword is unknown."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise TypeError(f"{caller}: unexpected keyword argument(s) {unknown}; the Hub options are "
                            f"{', '.join(cls.names())}.")
        return cls(**options)

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split keyword arguments into the Hub options and the rest (e.g. a transform's own options)."""
        names = set(cls.names())
        return ({k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names})


def _available_device(map_location: str | torch.device) -> torch.device:
    """``map_location`` as a device this machine has, or a one-line error naming it and the fix."""
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"map_location: expected a device such as 'cpu' or 'cuda', got {map_location!r}.") from None
    if device.type == "meta":
        raise ValueError("map_location='meta': the meta device holds no data, so it cannot hold loaded weights; "
                         "load on 'cpu' (the default) or a GPU.")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"map_location={str(device)!r}: CUDA is not available on this machine; "
                             "use map_location='cpu'.")
        if device.index is not None and device.index >= count:
            raise ValueError(f"map_location={str(device)!r}: this machine has {count} CUDA device(s), "
                             f"numbered 0 to {count - 1}.")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except RuntimeError:
            raise ValueError(f"map_location={str(device)!r}: this device is not available on this machine "
                             "(or this PyTorch build); use map_location='cpu'.") from None
    return device


# -- finding the files ---------------------------------------------------------------------------------------------
def shipped_checkpoint_dir(name: str) -> Path:
    """Folder of a checkpoint shipped with the package (in the installed wheel, or the repository's ``weights/``).

    Raises:
        CheckpointError: no such checkpoint was shipped.
    """
    here = Path(__file__).resolve().parent
    roots = (here / "_weights", here.parent / "weights")
    for root in roots:
        if (root / name / CONFIG_FILE).is_file():
            return root / name
    raise CheckpointError(f"The shipped checkpoint {name!r} is missing from {roots[0]} and {roots[1]}; reinstall "
                          f"{LIBRARY_NAME}, or pass a Hub repo id or a local folder.")


def _local_path_reason(name_or_path: str | os.PathLike) -> str | None:
    """Why ``name_or_path`` (not an existing folder) can only be a local path, or ``None`` if it may be a Hub id."""
    if isinstance(name_or_path, os.PathLike):
        return "it was given as a Path"
    name = str(name_or_path)
    if name in (".", "..") or name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(name).is_absolute():
        return "it starts like a path"
    if "\\" in name:
        return "Hub repo ids contain no '\\'"
    if name.count("/") > 1:
        return "Hub repo ids have at most one '/'"
    if "/" not in name:  # the Hub's few bare ids are legacy transformers models, never a checkpoint of this package
        return "checkpoints on the Hub have ids of the form 'org/name'"
    parent = Path(name).parent
    if parent.is_dir():
        return f"its parent folder {str(parent)!r} exists"
    return None


def find_checkpoint(
    name_or_path: str | os.PathLike,
    options: HubOptions | None = None,
    filenames: Sequence[str] = (CONFIG_FILE, WEIGHTS_FILE),
) -> dict[str, Path]:
    """The local paths of a checkpoint's ``filenames``, from a local folder or a Hub repo (downloaded or cached).

    A name that is not an existing folder is looked up on the Hub, unless it can only be a local path (it starts with
    ``/``, ``./``, ``../`` or ``~``, has no ``/`` or more than one, or its parent folder exists): then the error says
    so at once, without a network request.

    Args:
        name_or_path: a local folder or a Hub repo id (``"org/name"``).
        options: where to look on the Hub (its ``map_location`` is not used here).
        filenames: the files the checkpoint must hold.

    Returns:
        ``{filename: path}``.

    Raises:
        CheckpointError: a file is missing, or the name is neither a folder nor a Hub repo; the message names both
            possibilities and the fix.
    """
    options = options or HubOptions()
    name = os.fspath(name_or_path)
    folder = Path(name).expanduser()
    if folder.is_dir():
        for filename in filenames:
            if not (folder / filename).is_file():
                raise CheckpointError(f"Checkpoint folder {name!r} has no {filename}; a checkpoint folder holds "
                                      f"{' and '.join(filenames)} (write one with save_pretrained).")
        return {filename: folder / filename for filename in filenames}
    if folder.exists():
        raise CheckpointError(f"{name!r} is a file; pass the checkpoint folder that holds "
                              f"{' and '.join(filenames)}.")
    reason = _local_path_reason(name_or_path)
    if reason is not None:
        raise CheckpointError(f"{name!r}: no such folder, and not looked up as a Hub repo ({reason}); check the "
                              "path, or pass a Hub repo id ('org/name').")
    return {filename: _download(name, filename, options, first=i == 0) for i, filename in enumerate(filenames)}


def _download(name: str, filename: str, options: HubOptions, first: bool) -> Path:
    """One file of Hub repo ``name``, through the Hub cache."""
    no_folder = "no such folder, and " if first else ""
    try:
        return Path(hf_hub_download(name, filename, revision=options.revision, cache_dir=options.cache_dir,
                                    force_download=options.force_download,
                                    local_files_only=options.local_files_only, token=options.token))
    except HFValidationError as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{name!r}: no such folder, and not a valid Hub repo id ('org/name'): {detail}") \
            from None
    except GatedRepoError:  # before RepositoryNotFoundError, its base class
        raise CheckpointError(f"{name!r}: {no_folder}Hub repo {name!r} is gated: accept its terms on the Hub and pass "
                              "token=... (or log in with `hf auth login`).") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{name!r}: {no_folder}no such Hub repo (or it is private: pass token=..., or log in "
                              "with `hf auth login`).") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"Hub repo {name!r} has no revision {options.revision!r}.") from None
    except LocalEntryNotFoundError:  # before EntryNotFoundError, its base class
        offline = options.local_files_only or constants.HF_HUB_OFFLINE
        why = ("offline mode is on and it is not in the cache" if offline else
               "it could not be downloaded (offline, HF_HUB_OFFLINE=1 skips the Hub's retries)")
        raise CheckpointError(f"{name!r}: {no_folder}{filename} of Hub repo {name!r} is unavailable: {why}. "
                              "Download it once with network access, or point to a local checkpoint folder.") \
            from None
    except EntryNotFoundError:
        raise CheckpointError(f"Hub repo {name!r} (revision {options.revision or 'main'}) has no file {filename}; "
                              f"a checkpoint holds {CONFIG_FILE} and {WEIGHTS_FILE}.") from None
    except (HfHubHTTPError, OSError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{filename} of Hub repo {name!r} could not be fetched ({detail[:160]}); "
                              "try again, or point to a local checkpoint folder.") from None


# -- reading and writing the files ---------------------------------------------------------------------------------
def read_config(path: str | os.PathLike, source: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a checkpoint's ``config.json``); ``source`` names the checkpoint in errors.

    Raises:
        CheckpointError: the file is unreadable or holds no JSON object.
    """
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source}: {CONFIG_FILE} is not valid JSON ({err}); re-save or re-download it.") \
            from None
    except OSError as err:
        raise CheckpointError(f"{source}: {CONFIG_FILE} cannot be read ({err.strerror}).") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{source}: {CONFIG_FILE} must hold a JSON object, got {type(values).__name__}.")
    return values


def write_config(folder: str | os.PathLike, values: Mapping[str, Any]) -> Path:
    """Write ``values`` as ``folder/config.json`` (sorted keys), atomically.

    Raises:
        CheckpointError: a value is not finite or not JSON data (NaN would not read back as JSON).
    """
    try:
        text = json.dumps(dict(values), indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{CONFIG_FILE}: cannot store these settings ({err}).") from None
    path = Path(folder) / CONFIG_FILE
    atomic_write_text(path, text)
    return path


def load_weights(path: str | os.PathLike, source: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file, on the CPU; no pickle is ever executed.

    Raises:
        CheckpointError: the file is not a readable safetensors file.
    """
    try:
        return load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        local = Path(source).expanduser().is_dir()  # else a Hub repo, read from the cache
        fix = "re-save the checkpoint (save_pretrained)" if local else "download it again (force_download=True)"
        raise CheckpointError(f"{source}: {WEIGHTS_FILE} is not a readable safetensors file ({detail[:160]}); "
                              f"{fix}.") from None


def save_weights(folder: str | os.PathLike, state: Mapping[str, Tensor]) -> Path:
    """Write ``state`` as ``folder/model.safetensors``, atomically (readable by all, like any shipped file)."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    path = Path(folder) / WEIGHTS_FILE
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"format": "pt", "library": LIBRARY_NAME}))
    return path


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Check that ``state`` has exactly ``model``'s tensors, with its shapes.

    Raises:
        CheckpointError: keys are missing or unexpected, or shapes differ (at most five of each are listed).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    details = [f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}"
               for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
               if items]
    if details:
        raise CheckpointError(f"{source} does not match its {CONFIG_FILE}: {'; '.join(details)}. The config and the "
                              "weights come from different models: re-save both together with save_pretrained.")


def write_model_card(
    folder: str | os.PathLike,
    *,
    title: str,
    summary: str = "",
    sections: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
) -> Path:
    """Write ``folder/README.md``, a Hub model card, atomically: the one way every card of the package is written.

    Args:
        folder: the checkpoint folder (it must exist).
        title: the card's heading.
        summary: Markdown under the heading.
        sections: ``{heading: Markdown}``, written in order as ``## heading`` sections.
        tags: Hub tags, after ``library_name: idaa_transforms`` in the YAML header.

    Returns:
        The card's path.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> card = write_model_card(folder, title="A VAE", summary="Trained here.", sections={"Usage": "Load it."},
        ...                         tags=["vae"])
        >>> print(card.read_text())
        ---
        library_name: idaa_transforms
        tags:
        - vae
        ---
        <BLANKLINE>
        # A VAE
        <BLANKLINE>
        Trained here.
        <BLANKLINE>
        ## Usage
        <BLANKLINE>
        Load it.
        <BLANKLINE>
    """
    header = ModelCardData(library_name=LIBRARY_NAME, tags=list(tags) or None).to_yaml()
    parts = [f"---\n{header}\n---", f"# {title}"]
    if summary.strip():
        parts.append(summary.strip())
    for heading, body in (sections or {}).items():
        parts.append(f"## {heading}\n\n{body.strip()}")
    path = Path(folder) / CARD_FILE
    atomic_write_text(path, "\n\n".join(parts) + "\n")
    return path


def push_to_hub(
    save: Callable[[Path], object],
    repo_id: str,
    *,
    commit_message: str = "Upload checkpoint",
    private: bool | None = None,
    token: str | None = None,
    branch: str | None = None,
    create_pr: bool = False,
) -> str:
    """Create (if needed) Hub repo ``repo_id`` and upload the folder that ``save(folder)`` writes, in one commit.

    Returns:
        The URL of the commit.
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"
        folder.mkdir()
        save(folder)
        return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                                 commit_message=commit_message, revision=branch, create_pr=create_pr)
