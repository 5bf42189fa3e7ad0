"""`hf:<path>`: a transformers vision-language model (families in hf_families.py).

The prompt goes through the processor's own chat template as one user turn whose content
interleaves {"type": "image"} and {"type": "text"} items in prompt order; decoding is greedy and
only the new tokens are returned (MMAD allowed 128 new tokens for local models). Concurrent
generate() calls (the runner's --workers threads) are answered in batches of up to `batch_size`,
left-padded, each answer cut at its own end-of-turn token.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import MmadError
from ..protocol.prompt import Prompt
from ..registry import convert_options
from .base import MLLM
from .batching import MicroBatcher
from .hf_families import check_needs, family_of, family_of_folder, processor_images

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
DTYPES = ("auto", "float32", "float16", "bfloat16")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def resolve_model_dir(path: str) -> Path:
    """A local folder, or a hub id already in the local Hugging Face cache (never downloads)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if looks_like_hub_id:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(path, local_files_only=True))
        except Exception:
            raise MmadError(
                f"hf:{path}: not a local folder and not in the local Hugging Face cache; download it first "
                f"(huggingface-cli download {path} --local-dir DIR) and use hf:DIR"
            ) from None
    raise MmadError(f"hf:{path}: model folder {p} not found; give a folder saved with save_pretrained (config.json, weights, processor files)")


def check_model_dir(d: Path) -> None:
    """Fail fast, naming the missing file, before transformers tries (and offline, fails slowly)."""
    if not (d / "config.json").is_file():
        raise MmadError(f"hf: {d / 'config.json'} not found; the folder must hold a transformers model (save_pretrained output)")
    found = [f for f in WEIGHT_FILES if (d / f).is_file()]
    if not found:
        raise MmadError(f"hf: no weights in {d} (expected {' or '.join(WEIGHT_FILES[:2])}); copy the model weights into that folder")
    if found[0].endswith(".index.json"):
        shards = sorted(set(json.loads((d / found[0]).read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise MmadError(f"hf: weight shard {d / missing[0]} not found ({len(missing)} of {len(shards)} missing); copy all shards listed in {found[0]}")
    if not any((d / f).is_file() for f in PROCESSOR_FILES):
        raise MmadError(f"hf: {d / PROCESSOR_FILES[0]} (or {PROCESSOR_FILES[1]}) not found; save the model's processor into the same folder")
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise MmadError(f"hf: {d / TOKENIZER_FILES[0]} (or {', '.join(TOKENIZER_FILES[1:])}) not found; save the model's tokenizer into the same folder")


class HFVisionModel(MLLM):
    def __init__(
        self,
        path: str,
        *,
        max_new_tokens: int = 128,
        dtype: str = "auto",
        device: str = "cpu",
        max_side: int | None = None,
        system: str | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 1,
        batch_wait: float = 0.05,
    ):
        if not path:
            raise MmadError("hf:<path>: give the model folder, e.g. hf:/models/Qwen2-VL-2B-Instruct")
        if dtype not in DTYPES:
            raise MmadError(f"hf dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
            raise MmadError(f"hf device {device!r}: use cpu, cuda, cuda:N or auto")
        self.path = path
        self.name = f"hf:{path}"
        self.max_new_tokens = int(max_new_tokens)
        self.dtype_name = dtype
        self.max_side = int(max_side) if max_side else None
        self.system = system
        if int(batch_size) < 1 or float(batch_wait) < 0:
            raise MmadError(f"hf batch_size={batch_size} / batch_wait={batch_wait}: use batch_size >= 1 and batch_wait >= 0 seconds")
        self.batch_size = int(batch_size)
        model_dir = resolve_model_dir(path)
        check_model_dir(model_dir)
        try:
            check_needs(family_of_folder(json.loads((model_dir / "config.json").read_text())), str(model_dir))
        except (ValueError, UnicodeDecodeError, AttributeError):
            pass  # a broken config.json is reported by transformers below, in one line
        self.model_dir = model_dir

        import torch
        import transformers

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise MmadError(f"hf device {device!r}: no CUDA device is available here; use device=cpu")
        self.device = device
        kw: dict[str, Any] = {"trust_remote_code": bool(trust_remote_code)}
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(str(model_dir), **kw)
        except Exception as e:
            raise MmadError(f"hf: cannot load the processor from {model_dir}: {_first_line(e)}") from None
        if not getattr(self.processor, "chat_template", None) and getattr(getattr(self.processor, "tokenizer", None), "chat_template", None):
            self.processor.chat_template = self.processor.tokenizer.chat_template  # older folders keep it with the tokenizer only
        if not getattr(self.processor, "chat_template", None):
            raise MmadError(f"hf: the processor in {model_dir} has no chat template (chat_template.jinja); save one with the processor")
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        auto_classes = [getattr(transformers, n) for n in ("AutoModelForImageTextToText", "AutoModelForVision2Seq") if hasattr(transformers, n)]
        errors = []
        for cls in auto_classes:
            try:
                self.model = cls.from_pretrained(str(model_dir), dtype=torch_dtype, **kw)
                break
            except ValueError as e:  # this auto class does not know the architecture
                errors.append(_first_line(e))
            except Exception as e:
                raise MmadError(f"hf: cannot load the model from {model_dir}: {_first_line(e)}") from None
        else:
            raise MmadError(f"hf: {model_dir} is not an image-text-to-text model transformers knows: {errors[-1] if errors else ''}")
        self.model.to(device).eval()
        self.architecture = (getattr(self.model.config, "architectures", None) or [type(self.model).__name__])[0]
        self.family = family_of(self.model.config)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        tokenizer.padding_side = "left"  # generation continues every row from its last column
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._pad_id = self.model.generation_config.pad_token_id
        if self._pad_id is None:
            self._pad_id = tokenizer.pad_token_id
        # one model, one batch at a time: the batcher is also the lock around the model
        self._batcher = MicroBatcher(self._generate_batch, self.batch_size if self.family else 1, batch_wait)
        self._hinted = False
        if self.batch_size > 1 and self.family is None:
            print(
                f"mmad-boost: hf: batching is not verified for model_type {getattr(self.model.config, 'model_type', '?')!r} "
                "(see mmad_boost/models/hf_families.py); answering one question at a time",
                file=sys.stderr,
            )

    def config(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.model_dir),
            "architecture": self.architecture,
            "max_new_tokens": self.max_new_tokens,
            "dtype": self.dtype_name,
            "max_side": self.max_side,
            "system": self.system,
            "decoding": "greedy",
        }

    def messages(self, prompt: Prompt) -> tuple[list[dict], list[Image.Image]]:
        content: list[dict] = []
        images: list[Image.Image] = []
        for part in prompt.parts:
            if isinstance(part, str):
                if part:
                    content.append({"type": "text", "text": part})
            else:
                content.append({"type": "image"})
                images.append(self._resize(part.convert("RGB")))
        messages = []
        system = prompt.system if prompt.system is not None else self.system
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": content})
        return messages, images

    def _resize(self, im: Image.Image) -> Image.Image:
        if self.max_side and max(im.size) > self.max_side:
            s = self.max_side / max(im.size)
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BICUBIC)
        return im

    def encode(self, prompts: list[Prompt]):
        """The processor's tensors for a batch: own chat template, left padding, images in prompt order."""
        texts, images = [], []
        for prompt in prompts:
            messages, ims = self.messages(prompt)
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            images.append(ims)
        # the rendered template already holds the special tokens (BOS etc.): add none twice
        inputs = self.processor(text=texts, images=processor_images(images), return_tensors="pt", padding=True, add_special_tokens=False)
        return inputs.to(self.model.device, dtype=self.model.dtype)

    def generate(self, prompt: Prompt) -> str:
        answer = self._batcher.submit(prompt)
        self._hint_workers()
        return answer

    def _generate_batch(self, prompts: list[Prompt]) -> list[str]:
        import torch

        inputs = self.encode(list(prompts))
        n_in = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, pad_token_id=self._pad_id
            )
        answers = []
        for row in out[:, n_in:].tolist():
            stop = next((i for i, t in enumerate(row) if t in self._eos_ids), len(row))  # each row stops at its own end
            answers.append(self.processor.decode(row[:stop], skip_special_tokens=True).strip())
        return answers

    def _hint_workers(self) -> None:
        b = self._batcher
        if self.batch_size > 1 and not self._hinted and len(b.batch_sizes) >= 8 and b.peak_callers == 1:
            self._hinted = True
            print(
                f"mmad-boost: hf batch_size={self.batch_size} but questions arrive one at a time; run with --workers "
                f"{self.batch_size} (or more) so batches fill",
                file=sys.stderr,
            )

    def close(self) -> None:
        self.model = None


def create(rest: str, **options: Any) -> HFVisionModel:
    """`hf:<folder>`; option strings are converted by HFVisionModel's signature."""
    kwargs = convert_options(HFVisionModel, options, "hf model", skip=1)
    return HFVisionModel(rest, **kwargs)
