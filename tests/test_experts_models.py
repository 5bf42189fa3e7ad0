"""AnomalyCLIP on a tiny random open_clip model; the anomalib adapter with local EfficientNet weights."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmad_boost.errors import MmadError
from mmad_boost.experts import create_expert, load_expert
from mmad_boost.experts.sample import visa_split

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised ViT open_clip model saved as a local weights file (no CLIP weights exist here)."""
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("clip")
    (d / "tinyclip-test.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(d / "tinyclip-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tinyclip-test", pretrained=None)
    torch.save(model.state_dict(), d / "tiny.pt")
    return d / "tiny.pt"


def test_anomalyclip_without_weights_fails_fast(tmp_path):
    with pytest.raises(MmadError, match="weights"):
        create_expert("anomalyclip")
    with pytest.raises(MmadError, match="nothere.pt"):
        create_expert("anomalyclip", weights=str(tmp_path / "nothere.pt"))


def test_anomalyclip_maps_on_tiny_model(tiny_clip, tmp_path):
    expert = create_expert("anomalyclip", arch="tinyclip-test", weights=str(tiny_clip), image_size=96)
    assert expert.fitted and expert.resample == "nearest"
    plain = Image.new("RGB", (90, 60), (120, 120, 120))
    spotted = plain.copy()
    ImageDraw.Draw(spotted).rectangle((10, 10, 40, 40), fill=(250, 10, 10))
    a, b = expert.predict(plain), expert.predict(spotted)
    assert a.map.shape == (60, 90) and a.map.dtype == np.float32
    assert 0 <= a.map.min() <= a.map.max() <= 1 and 0 <= a.score <= 1
    assert not np.allclose(a.map, b.map)  # the real vision path reacts to the image
    assert expert._size == (96, 96) and len(expert._layers) == 4  # 96 px via resized position embeddings
    # learned prompts from a file replace the hand-written ensembles
    rng = np.random.default_rng(0)
    np.save(tmp_path / "prompts.npy", rng.normal(size=(2, 32)).astype(np.float32))
    learned = create_expert("anomalyclip", arch="tinyclip-test", weights=str(tiny_clip), image_size=96, prompts=str(tmp_path / "prompts.npy"))
    assert not np.allclose(learned.predict(plain).map, a.map)
    np.save(tmp_path / "bad.npy", np.zeros((3, 32), np.float32))
    with pytest.raises(MmadError, match="shape"):
        create_expert("anomalyclip", arch="tinyclip-test", weights=str(tiny_clip), image_size=96, prompts=str(tmp_path / "bad.npy")).predict(plain)


def test_anomalyclip_wrong_arch_is_a_user_error(tiny_clip, tmp_path):
    import open_clip

    other = json.loads(json.dumps(TINY))
    other["vision_cfg"]["width"] = 48
    (tmp_path / "tinyclip-other.json").write_text(json.dumps(other))
    open_clip.add_model_config(tmp_path / "tinyclip-other.json")
    with pytest.raises(MmadError, match="does not fit"):
        create_expert("anomalyclip", arch="tinyclip-other", weights=str(tiny_clip), image_size=None).predict(Image.new("RGB", (32, 32)))


def test_anomalib_models_needing_downloads_fail_fast():
    with pytest.raises(MmadError, match="CLIP"):
        create_expert("anomalib:WinClip")


@pytest.mark.slow
def test_anomalib_patchcore_with_local_efficientnet(tmp_path):
    split = visa_split("capsules")
    small = [Image.open(p).convert("RGB").resize((128, 85)) for p in split.train[:3]]
    expert = create_expert("anomalib:Patchcore", size=96, coreset_sampling_ratio=0.5)
    expert.fit(small)
    test = Image.open(split.test_anomaly[0][0]).convert("RGB").resize((128, 85))
    out = expert.predict(test)
    assert out.map.shape == (85, 128) and out.score > 0
    assert expert.predict(small[0]).score < out.score  # a training image is in its memory bank
    expert.save(tmp_path / "ab")
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "results").exists()
    again = load_expert(tmp_path / "ab")
    assert again.predict(test).score == pytest.approx(out.score, rel=1e-5)
    with pytest.raises(MmadError, match="unknown"):
        create_expert("anomalib:NoSuchModel").fit(small)
