"""`anomalyclip`: zero-shot anomaly maps from a CLIP model (after AnomalyCLIP, Zhou et al., ICLR 2024).

Patch tokens of several vision-transformer layers go through CLIP's final norm and projection and
are compared with two text embeddings, "normal" and "abnormal"; the softmax probability of
"abnormal" per patch, averaged over layers, upsampled and Gaussian-smoothed (sigma 4), is the map.
Image score = mean of the global image embedding's "abnormal" probability and the map's maximum.

Text side: hand-written prompt ensembles (object-agnostic states x photo templates), or learned
prompts the user has: a `.npy` of shape (2, D) or a `.safetensors` with `normal` and `abnormal`
vectors, i.e. the text embeddings their learned prompts produce.

Weights: open_clip architecture name + a local weights file (nothing is downloaded); MMAD used
ViT-L/14 at 518 px (`arch="ViT-L-14-336", image_size=518`).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MmadError
from .base import Expert, array_hash

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect", "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage", "{} with a scratch", "{} with a crack")
TEMPLATES = (
    "a photo of a {}.",
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a jpeg photo of a {}.",
    "a blurry photo of the {}.",
    "an industrial photo of a {}.",
)


class AnomalyCLIP(Expert):
    name = kind = "anomalyclip"
    resample = "nearest"  # as MMAD resized AnomalyCLIP maps
    normalisation = "min-max"  # MMAD's AnomalyCLIP drawing min-max normalised (its PatchCore code divides by the max)

    def __init__(
        self,
        arch: str = "ViT-L-14-336",
        weights: str | None = None,
        image_size: int | None = 518,
        layers: list[int] | None = None,
        prompts: str | None = None,
        object_name: str = "object",
        sigma: float = 4.0,
        temperature: float = 0.07,
    ):
        super().__init__()
        if not weights:
            raise MmadError(
                f"anomalyclip: no CLIP weights given; download the {arch} open_clip weights once elsewhere and pass weights=/path/file.pt (expert option weights=...)"
            )
        if not Path(weights).is_file():
            raise MmadError(f"anomalyclip: CLIP weights file {weights} not found; pass weights=/path/to/{arch} open_clip .pt or .safetensors file")
        if prompts and not Path(prompts).is_file():
            raise MmadError(f"anomalyclip: learned prompts file {prompts} not found; pass a .npy (2, D) or .safetensors with normal/abnormal")
        self.arch, self.weights, self.image_size = arch, str(weights), (int(image_size) if image_size else None)
        self.layers, self.prompts, self.object_name = (list(layers) if layers else None), prompts, object_name
        self.sigma, self.temperature = float(sigma), float(temperature)
        self.fitted = True  # zero-shot
        self._model = self._text = None
        self._lock = threading.Lock()

    def config(self) -> dict:
        return {
            "arch": self.arch,
            "weights": self.weights,
            "image_size": self.image_size,
            "layers": self.layers,
            "prompts": self.prompts,
            "object_name": self.object_name,
            "sigma": self.sigma,
            "temperature": self.temperature,
        }

    @property
    def state_id(self) -> str:
        st = Path(self.weights).stat()
        return array_hash(extra=f"anomalyclip{self.config()}{st.st_size}{st.st_mtime_ns}")

    # -- model and text side ---------------------------------------------------------
    def _load(self):
        with self._lock:
            if self._model is not None:
                return self._model
            import open_clip
            import torch

            kw = {"force_image_size": self.image_size} if self.image_size else {}
            try:
                model = open_clip.create_model(self.arch, pretrained=self.weights, **kw)
            except (RuntimeError, AssertionError, KeyError, ValueError) as e:
                raise MmadError(
                    f"anomalyclip: {self.weights} does not fit {self.arch} ({(str(e).splitlines() or [type(e).__name__])[0][:200]}); pass the matching arch="
                ) from None
            model.eval()
            visual = model.visual
            if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
                raise MmadError(f"anomalyclip: {self.arch} has no vision transformer; use a ViT open_clip model")
            depth = len(visual.transformer.resblocks)
            self._layers = sorted({min(depth - 1, max(0, i)) for i in (self.layers or [depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1])})
            size = visual.image_size
            self._size = size if isinstance(size, tuple) else (size, size)
            mean = getattr(visual, "image_mean", None) or open_clip.constants.OPENAI_DATASET_MEAN
            std = getattr(visual, "image_std", None) or open_clip.constants.OPENAI_DATASET_STD
            self._mean, self._std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
            self._text = self._text_features(model, open_clip.get_tokenizer(self.arch))
            self._model = model
            return model

    def _text_features(self, model, tokenizer):
        import torch

        if self.prompts:
            return torch.from_numpy(_read_prompts(Path(self.prompts), model)).float()
        feats = []
        with torch.inference_mode():
            for states in (NORMAL_STATES, ABNORMAL_STATES):
                texts = [t.format(s.format(self.object_name)) for s in states for t in TEMPLATES]
                f = model.encode_text(tokenizer(texts))
                f = f / f.norm(dim=-1, keepdim=True)
                m = f.mean(0)
                feats.append(m / m.norm())
        return torch.stack(feats)

    # -- protocol ----------------------------------------------------------------------
    def _predict_map(self, image, mask, templates):
        import cv2
        import torch

        model = self._load()
        visual = model.visual
        arr = np.array(image.convert("RGB").resize(self._size[::-1], Image.BICUBIC))
        x = (torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255 - self._mean) / self._std
        with torch.inference_mode():
            out = visual.forward_intermediates(x, indices=self._layers, normalize_intermediates=True, output_fmt="NCHW")
            text = self._text
            probs = []
            for tokens in out["image_intermediates"]:  # (1, width, h, w), already through ln_post
                t = tokens[0].permute(1, 2, 0)
                if visual.proj is not None:
                    t = t @ visual.proj
                t = t / t.norm(dim=-1, keepdim=True)
                probs.append(torch.softmax(t @ text.T / self.temperature, dim=-1)[..., 1])
            grid = torch.stack(probs).mean(0).numpy().astype(np.float32)
            g = out["image_features"][0]
            g = g / g.norm()
            global_p = float(torch.softmax(g @ text.T / self.temperature, dim=-1)[1])
        h, w = self._size
        amap = cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.sigma > 0:
            amap = cv2.GaussianBlur(amap, (2 * int(4 * self.sigma + 0.5) + 1,) * 2, self.sigma)
        W, H = image.size
        amap = cv2.resize(amap, (W, H), interpolation=cv2.INTER_LINEAR)
        return amap.astype(np.float32), 0.5 * (global_p + float(amap.max()))


def _read_prompts(path: Path, model) -> np.ndarray:
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        d = load_file(str(path))
        if not {"normal", "abnormal"} <= set(d):
            raise MmadError(f"{path}: needs tensors 'normal' and 'abnormal'")
        arr = np.stack([d["normal"].reshape(-1), d["abnormal"].reshape(-1)])
    else:
        raise MmadError(f"{path}: learned prompts must be .npy (2, D) or .safetensors")
    dim = model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None else arr.shape[-1]
    if arr.shape != (2, dim):
        raise MmadError(f"{path}: learned prompts must have shape (2, {dim}) (normal, abnormal); got {arr.shape}")
    return arr / np.linalg.norm(arr, axis=1, keepdims=True)
