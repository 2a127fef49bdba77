"""Loading model files without running code from them.

A ``torch.save`` file is a pickle, and unpickling can run any code the file's author put in it. The adapters therefore
read weights from ``.safetensors`` (tensors only) or with ``torch.load(weights_only=True)`` (tensors and plain
containers only). A file that needs full unpickling -- every ultralytics ``.pt`` checkpoint, a ``.pth`` holding
Python objects -- is refused BEFORE anything in it is unpickled, unless the member opts in with
``trust_pickle: true`` (which runs code from the file) or the file's SHA-256 is listed in :data:`KNOWN_PICKLES`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from fusion.io import sha256_file

__all__ = [
    "KNOWN_PICKLES",
    "UntrustedPickleError",
    "WeightsFileError",
    "load_state_strict",
    "pickle_trust",
    "read_safetensors",
    "read_weights_only",
]

# SHA-256 -> description of pickle files known to be what they claim (e.g. official release weights). Only hashes
# checked against a file obtained from its publisher belong here; none can be fetched in this project's offline
# build, so it ships empty and every pickle needs ``trust_pickle: true``.
KNOWN_PICKLES: dict[str, str] = {}


class UntrustedPickleError(ValueError):
    """A model file that can only be loaded by unpickling it, which may run code, and that nobody vouched for."""


class WeightsFileError(ValueError):
    """A weights file that is not what it should be (not safetensors, not a torch.save file, corrupt)."""


def pickle_trust(
    path: str | Path, trust_pickle: bool, who: str, known: Mapping[str, str] | None = None
) -> str:
    """Decide, without unpickling, whether the pickle at ``path`` may be loaded; returns the loading mode.

    Args:
        path: The pickle file (an ultralytics ``.pt``, a ``.pth`` with Python objects).
        trust_pickle: The member's explicit opt-in.
        who: Who asks, for the message (``"member 'yolo'"``).
        known: SHA-256 -> description of vouched-for files (default :data:`KNOWN_PICKLES`).

    Returns:
        ``"trusted pickle (trust_pickle: true)"`` or ``"known pickle (<description>)"``.

    Raises:
        UntrustedPickleError: neither opted in nor a known file; the message says why and what to do.
    """
    if trust_pickle:
        return "trusted pickle (trust_pickle: true)"
    table = KNOWN_PICKLES if known is None else known
    if table:
        description = table.get(sha256_file(path))
        if description is not None:
            return f"known pickle ({description})"
    raise UntrustedPickleError(
        f"{who}: refusing to load {path}: it is a pickle, and loading a pickle runs any code stored in it. "
        "Use safetensors weights instead (ultralytics: `model: <model.yaml>` + `weights: <file.safetensors>`), or, "
        "only if you trust whoever made the file, set `trust_pickle: true` on the member (this runs code from "
        "the file)"
    )


def read_safetensors(path: str | Path, who: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file.

    Raises:
        FileNotFoundError: no file at ``path``.
        WeightsFileError: the file is not a valid safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{who}: weights file {path} does not exist (or is not a file)")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise WeightsFileError(f"{who}: {path} is not a valid .safetensors file ({error})") from None


def read_weights_only(path: str | Path, who: str) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with a clear error instead of a pickle traceback.

    Raises:
        FileNotFoundError: no file at ``path``.
        UntrustedPickleError: the file holds Python objects that only full unpickling (which may run code) reads.
        WeightsFileError: not a ``torch.save`` file at all (text, truncated, another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{who}: weights file {path} does not exist (or is not a file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise WeightsFileError(f"{who}: {path} is not a readable torch.save file ({error})") from None
        raise UntrustedPickleError(
            f"{who}: refusing to load {path}: it holds Python objects besides tensors, which only full "
            "unpickling reads, and unpickling runs any code stored in the file. Save the state dict alone "
            "(torch.save(model.state_dict(), ...)) or as .safetensors on a machine where the file is trusted"
        ) from None
    except (RuntimeError, EOFError, IndexError, KeyError, ValueError, OSError) as error:
        # torch reports a non-torch file as any of these (e.g. IndexError for a text file)
        raise WeightsFileError(
            f"{who}: {path} is not a torch.save file ({type(error).__name__}: {error})"
        ) from None


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a short message: how many keys are missing, unexpected
    or of another shape, and the first few of each.

    Raises:
        ValueError: ``"{what} do not fit: ..."`` when keys or shapes differ.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} != {list(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{len(keys)} {kind} (first: {', '.join(keys[:3])})"
        for keys, kind in (
            (missing, "missing keys"),
            (unexpected, "unexpected keys"),
            (shapes, "other shapes"),
        )
        if keys
    ]
    if problems:
        raise ValueError(f"{what} do not fit: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=True)
