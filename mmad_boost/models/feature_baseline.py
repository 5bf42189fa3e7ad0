"""`baseline:features`: an honest non-LLM baseline built from models that ship in packages.

It reads the same prompt an MLLM gets (images, knowledge text, expert picture, question, options)
and answers "Answer: X" without any language model:
- anomaly detection: nearest-neighbour distances of EfficientNet-Lite0 patch features between the
  query and the template images (PatchCore-like), query-to-template over template-to-query,
  against a threshold; a calibrated or
  ground-truth expert picture decides instead, since it says plainly whether it marked anything;
- localisation: the nine-grid cells of the expert's red marks, else of the largest patch distances;
- defect / object questions: MiniLM similarity (plus shared word stems) of each option with the
  prompt's knowledge entries; without knowledge, object questions accept only a confident ImageNet
  recognition that an option names, and everything else falls back to a seeded prior (as random).
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..protocol.prompt import Prompt
from .base import MLLM

GRID = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
_CELL = re.compile(r"top left|top right|bottom left|bottom right|top|bottom|left|right|cent(?:er|re)|middle")
_ENTRY = re.compile(r"<([^<>]{1,80})>")
_WORD = re.compile(r"[a-z]{3,}")
_STOP = {"the", "and", "with", "are", "has", "there", "this", "that", "from", "its", "for", "any", "not", "object", "product", "image", "defect"}
SIZE = 224


@dataclass
class Inputs:
    """What the baseline reads from a prompt."""

    question: str
    options: dict[str, str]
    image: Image.Image | None
    templates: list[Image.Image] = field(default_factory=list)
    knowledge: str = ""
    expert_image: Image.Image | None = None
    expert_sentence: str = ""


def read_prompt(prompt: Prompt) -> Inputs:
    q = prompt.query
    if q is not None:
        return Inputs(q.question, dict(q.options), q.image, list(q.templates), q.knowledge or "", q.expert_image, q.expert_sentence or "")
    return _parse_parts(prompt.parts)


def _parse_parts(parts) -> Inputs:
    """A prompt built elsewhere: find the pieces by the sentences that introduce them (§4 order)."""
    texts = [p for p in parts if isinstance(p, str)]
    last = texts[-1] if texts else ""
    opt = re.compile(r"^([A-E])\.\s*(.+)$", re.M)
    options = {m.group(1): m.group(2).strip() for m in opt.finditer(last)}
    question = opt.sub("", last).strip()
    question = question.rsplit("Question:", 1)[-1].strip()
    image = expert = None
    templates: list[Image.Image] = []
    sentence = line = ""
    in_defects = False
    for p in parts:
        if isinstance(p, str):
            lines = [t for t in p.strip().splitlines() if t.strip()]
            line = lines[-1].strip() if lines else line
            in_defects = in_defects or "defective" in line.lower()
            continue
        if image is None and "query image" in line.lower():
            image = p
        elif image is None:
            if not in_defects:
                templates.append(p)
        elif expert is None:
            expert, sentence = p, line
    if image is None:
        images = [p for p in parts if isinstance(p, Image.Image)]
        image = images[-1] if images else None
        templates = images[:-1]
    m = re.search(r"defect it may have:\n(.*?)(?:\nHere |\Z)", texts[0] if texts else "", re.S)
    return Inputs(question, options, image, templates, m.group(1).strip() if m else "", expert, sentence)


def question_kind(question: str, options: dict[str, str]) -> str:
    """anomaly | localisation | object | defect | structure (MMAD's question types, inferred from text)."""
    q = question.lower()
    values = [v.strip().lower().rstrip(".") for v in options.values()]
    if sorted(values) == ["no", "yes"] and ("defect" in q or "anomal" in q or "normal" in q):
        return "anomaly"
    if re.search(r"\bwhere\b|locat|position", q) or (values and all(_CELL.search(v) for v in values)):
        return "localisation"
    if re.search(r"kind of (product|object)|what (product|object)|type of (product|object)|which (product|object)|what is (this|the) (product|object)", q):
        return "object"
    if re.search(r"defect|anomal|damage|flaw|abnormal", q):
        return "defect"
    return "structure"


def option_cells(text: str) -> list[int]:
    names = {"centre": "center", "middle": "center"}
    return sorted({GRID.index(names.get(m, m)) for m in _CELL.findall(text.lower())})


def grid_shares(region: np.ndarray) -> np.ndarray:
    h, w = region.shape
    ys, xs = [0, h // 3, 2 * h // 3, h], [0, w // 3, 2 * w // 3, w]
    counts = np.array([region[ys[r] : ys[r + 1], xs[c] : xs[c + 1]].sum() for r in range(3) for c in range(3)], dtype=np.float64)
    return counts / counts.sum() if counts.sum() else counts


def red_region(image: Image.Image) -> np.ndarray:
    """Pixels inside the expert's red marks: boxes and contours are filled by their bounding rectangles."""
    from scipy import ndimage

    a = np.asarray(image.convert("RGB")).astype(np.int16)
    red = (a[..., 0] > 200) & (a[..., 1] < 70) & (a[..., 2] < 70)
    region = np.zeros(red.shape, bool)
    labels, n = ndimage.label(red)
    for sl in ndimage.find_objects(labels):
        if sl is not None:
            region[sl] = True
    return region


def bright_region(image: Image.Image) -> np.ndarray:
    """Yellow-green (high) pixels of a viridis mask or heat map."""
    a = np.asarray(image.convert("RGB")).astype(np.int16)
    return (a[..., 0] > 150) & (a[..., 1] > 180) & (a[..., 2] < 120)


def _stems(text: str) -> set[str]:
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOP}


def knowledge_entries(knowledge: str) -> list[tuple[str, str]]:
    """(title, text) per `<Title> Description: ...` entry; a text without titles is one entry."""
    marks = list(_ENTRY.finditer(knowledge))
    if not marks:
        return [("", knowledge.strip())] if knowledge.strip() else []
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(knowledge)
        out.append((m.group(1).strip(), knowledge[m.start() : end].strip()))
    return out


def _is_normal_entry(title: str) -> bool:
    return bool(re.search(r"normal|good|characteristic", title.lower()))


class FeatureBaseline(MLLM):
    """See the module docstring. Deterministic; weights load once, lazily, on first use."""

    def __init__(self, threshold: float | str = 1.07, cache_size: int | str = 64):
        self.name = "baseline:features"
        self.threshold = float(threshold)  # on anomaly_score, a ratio
        self.name_match, self.confident = 0.75, 0.8  # option ~ ImageNet class name; probability that counts
        self.cache_size = int(cache_size)
        self._lock = threading.Lock()
        self._net = None
        self._text = None
        self._classes: list[str] | None = None
        self._image_cache: OrderedDict = OrderedDict()
        self._text_cache: dict[str, np.ndarray] = {}

    def config(self) -> dict:
        return {"name": self.name, "threshold": self.threshold, "image": "efficientnet-lite0", "text": "all-MiniLM-L6-v2"}

    # -- models --------------------------------------------------------------
    def _load(self):
        from ..weights import efficientnet_lite0, minilm

        with self._lock:
            if self._net is None:
                self._net = efficientnet_lite0()
                from timm.data import ImageNetInfo

                info = ImageNetInfo()
                self._classes = [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]
            if self._text is None:
                self._text = minilm()

    def features(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(patch features HxWxC, L2-normalised; ImageNet probabilities), cached by image content."""
        import torch

        self._load()
        im = image.convert("RGB")
        key = hashlib.blake2b(repr(im.size).encode() + im.tobytes(), digest_size=16).hexdigest()
        with self._lock:
            if key in self._image_cache:
                self._image_cache.move_to_end(key)
                return self._image_cache[key]
        x = np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        t = torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None]
        net = self._net
        with torch.inference_mode():
            h = net.bn1(net.conv_stem(t))
            maps = []
            for i, block in enumerate(net.blocks):
                h = block(h)
                if i in (2, 4):  # strides 8 and 16
                    maps.append(h)
            probs = torch.softmax(net.forward_head(net.bn2(net.conv_head(h))), -1)[0].numpy()
            f8 = torch.nn.functional.avg_pool2d(maps[0], 3, 1, 1)
            f16 = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(maps[1], 3, 1, 1), size=f8.shape[-2:], mode="bilinear", align_corners=False)
            f = torch.nn.functional.normalize(torch.cat([f8, f16], 1), dim=1)[0].permute(1, 2, 0).numpy()
        value = (f, probs)
        with self._lock:
            self._image_cache[key] = value
            while len(self._image_cache) > self.cache_size:
                self._image_cache.popitem(last=False)
        return value

    def embed(self, texts: list[str]) -> np.ndarray:
        self._load()
        todo = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if todo:
            with self._lock:
                vecs = self._text.encode(todo, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            for t, v in zip(todo, vecs):
                self._text_cache[t] = v
        return np.stack([self._text_cache[t] for t in texts])

    # -- evidence ------------------------------------------------------------
    def anomaly_map(self, image: Image.Image, templates: list[Image.Image]) -> np.ndarray:
        """Per patch: cosine distance to the nearest template patch (28 x 28)."""
        f, _ = self.features(image)
        bank = np.concatenate([self.features(t)[0].reshape(-1, f.shape[-1]) for t in templates])
        sim = f.reshape(-1, f.shape[-1]) @ bank.T
        return (1.0 - sim.max(1)).reshape(f.shape[:2])

    def anomaly_score(self, image: Image.Image, templates: list[Image.Image]) -> float:
        """Largest query-to-template patch distance over the largest template-to-query one.

        Scale-free: a defect adds query patches no template has, while misalignment and texture
        raise both directions alike (bundled VisA sample, 1 template: normal fryum <= 1.07, chosen there).
        """
        forward = float(self.anomaly_map(image, templates).max())
        backward = float(np.mean([self.anomaly_map(t, [image]).max() for t in templates]))
        return forward / max(backward, 1e-6)

    def is_anomalous(self, image: Image.Image, templates: list[Image.Image]) -> tuple[bool, float]:
        score = self.anomaly_score(image, templates)
        return score > self.threshold, score

    # -- answering -----------------------------------------------------------
    def generate(self, prompt: Prompt) -> str:
        x = read_prompt(prompt)
        if not x.options:
            raise ValueError("baseline:features answers multiple-choice questions only (no lettered options in the prompt)")
        if x.image is None:
            raise ValueError("baseline:features needs the query image")
        kind = question_kind(x.question, x.options)
        scores = getattr(self, f"_answer_{kind}")(x)
        best = max(x.options, key=lambda k: (scores.get(k, float("-inf")), -ord(k)))
        if prompt.query is not None:
            prompt.query.trace.setdefault("baseline", {})["kind"] = kind
        return f"Answer: {best}"

    def _expert_says(self, x: Inputs) -> bool | None:
        """True/False when the expert picture states an answer plainly; None for faithful model experts."""
        if x.expert_image is None:
            return None
        s = x.expert_sentence.lower()
        if "calibrated" in s:
            return "marked nothing" not in s and "nothing anomalous" not in s
        if "reference annotation" in s or "ground truth" in s:
            return bool(self._expert_region(x).any())
        return None  # faithful: marks appear on normal images too

    def _expert_region(self, x: Inputs) -> np.ndarray:
        if "red" in x.expert_sentence.lower():  # boxes / contours
            return red_region(x.expert_image)
        return bright_region(x.expert_image)  # highlight / mask / heat map: viridis, high = yellow-green

    def _answer_anomaly(self, x: Inputs) -> dict[str, float]:
        said = self._expert_says(x)
        if said is None:
            if not x.templates:
                said = False  # no reference: a normal prior (most inspected products are good)
            else:
                said = self.is_anomalous(x.image, x.templates)[0]
        yes = [k for k, v in x.options.items() if v.strip().lower().startswith("yes")]
        return {k: (1.0 if (k in yes) == said else 0.0) for k in x.options}

    def _answer_localisation(self, x: Inputs) -> dict[str, float]:
        shares = None
        if x.expert_image is not None:
            region = self._expert_region(x)
            if region.any():
                shares = grid_shares(region)
        if shares is None and x.templates:
            amap = self.anomaly_map(x.image, x.templates)
            floor = np.median(amap)
            shares = grid_shares(amap - floor >= 0.8 * (amap.max() - floor))
        if shares is None:
            shares = np.full(9, 1 / 9)
        out = {}
        for k, v in x.options.items():
            cells = option_cells(v)
            out[k] = (shares[cells].sum() - 0.01 * len(cells)) if cells else -1.0
        return out

    def _knowledge_scores(self, x: Inputs, normal: bool | None) -> dict[str, float] | None:
        """Option-to-knowledge match; `normal` picks the normal (True), defect (False) or all (None) entries."""
        every = knowledge_entries(x.knowledge)
        entries = [(t, body) for t, body in every if normal is None or _is_normal_entry(t) == normal] or every
        if not entries:
            return None
        letters = list(x.options)
        opts = self.embed([x.options[k] for k in letters])
        ent = self.embed([body[:1000] for _, body in entries] + [t for t, _ in entries if t])
        sims = (opts @ ent.T).max(1)
        words = _stems(" ".join(body for _, body in entries))
        out = {}
        for i, k in enumerate(letters):
            stems = _stems(x.options[k])
            lexical = len(stems & words) / len(stems) if stems else 0.0
            out[k] = float(sims[i]) + 0.5 * lexical
        return out

    def _prior(self, x: Inputs) -> dict[str, float]:
        """No evidence: a seeded pseudo-random preference (like baseline:random), never a fixed letter."""
        rng = random.Random(x.question + "|" + "|".join(f"{k}={v}" for k, v in x.options.items()))
        return {k: rng.random() for k in x.options}

    def _answer_defect(self, x: Inputs) -> dict[str, float]:
        # Without knowledge the baseline has no defect vocabulary to ground option names in.
        return self._knowledge_scores(x, normal=False) or self._prior(x)

    def _answer_object(self, x: Inputs, normal: bool | None = None) -> dict[str, float]:
        # Product names appear in any entry's title or text ("<Fryum Defects>"), not only the normal one.
        scores = self._knowledge_scores(x, normal=normal) if x.knowledge else None
        if scores is not None:
            return scores
        # Without knowledge, only a confident ImageNet recognition that an option names counts
        # (on the VisA sample, capsules look like ImageNet's "screw": weak guesses mislead).
        _, probs = self.features(x.image)
        top = np.argsort(-probs)[:5]
        letters = list(x.options)
        sims = self.embed([x.options[k] for k in letters]) @ self.embed([self._classes[i] for i in top]).T
        evidence = {k: float(probs[top][s >= self.name_match].sum()) for k, s in zip(letters, sims)}
        best = max(letters, key=lambda k: evidence[k])
        return evidence if evidence[best] >= self.confident else self._prior(x)

    def _answer_structure(self, x: Inputs) -> dict[str, float]:
        return self._answer_object(x, normal=True)
