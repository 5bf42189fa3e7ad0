"""The MLLM protocol, adapters and offline baselines."""

from .base import MLLM, FunctionModel, as_model, query_from_hand, to_prompt
from .registry import create_model, model_kinds, register_model_kind

__all__ = ["MLLM", "FunctionModel", "as_model", "create_model", "model_kinds", "query_from_hand", "register_model_kind", "to_prompt"]
