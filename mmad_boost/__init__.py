"""mmad-boost: make multimodal LLMs better industrial inspectors, and measure by how much on MMAD."""

from __future__ import annotations

from .errors import MmadError, ModelError
from .models import MLLM, FunctionModel, as_model, create_model, register_model_kind
from .protocol.prompt import MMAD_INSTRUCTION, Prompt, Query, SampleInfo, build_prompt

__version__ = "0.1.0"
__all__ = [
    "BoostedModel",
    "MLLM",
    "FunctionModel",
    "MmadError",
    "ModelError",
    "MMAD_INSTRUCTION",
    "Prompt",
    "Query",
    "SampleInfo",
    "as_model",
    "build_prompt",
    "create_model",
    "register_model_kind",
]


def __getattr__(name):  # BoostedModel pulls in retrieval and experts: import it only when asked
    if name == "BoostedModel":
        from .boosts.boosted import BoostedModel

        return BoostedModel
    raise AttributeError(name)
