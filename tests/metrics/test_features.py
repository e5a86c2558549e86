"""Feature spaces: EfficientNet-Lite0 key mapping checked by ImageNet predictions on real photos,
ResNet18 loading from a local file checked against the in-memory model, error messages, and the
inception wrapper."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import skimage.data
import timm
import torch

from medgen.metrics import features as fs

torch.set_num_threads(1)


def _images(n: int, size: int = 32, seed: int = 0, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def _photo(name: str) -> torch.Tensor:
    """scikit-image sample photo (shipped with the package) -> [1, 3, H, W] in [-1, 1]."""
    rgb = torch.tensor(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float()
    return rgb / 127.5 - 1.0


def test_unknown_space_names_known_ones():
    with pytest.raises(ValueError, match="known: inception, efficientnet_lite0, resnet18"):
        fs.features(_images(1), "vgg")
    with pytest.raises(ValueError, match="unknown feature space"):
        fs.feature_space_info("vgg")


@pytest.mark.parametrize("photo, classes", [
    ("chelsea", range(281, 286)),   # ImageNet 281-285: tabby, tiger, Persian, Siamese, Egyptian cat
    ("coffee", (967, 968)),         # espresso, cup
])
def test_efficientnet_lite0_mapping_classifies_photos(photo, classes):
    """With the mapped weights the ImageNet head must name the photo's content confidently; a
    wrong key map (e.g. swapped batch norms or blocks) gives near-uniform or wrong predictions."""
    net = fs._efficientnet_lite0(1000)
    cfg = net.pretrained_cfg
    with torch.no_grad():
        p = net(fs._preprocess(_photo(photo), cfg["mean"], cfg["std"])).softmax(-1)[0]
    top = int(p.argmax())
    assert top in classes
    assert float(p[list(classes)].sum()) > 0.8      # measured: cat 0.95 over 281-285, coffee 0.91


def test_efficientnet_lite0_mapping_is_strict():
    src = torch.load(fs.efficientnet_lite0_source_path(), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    depths = [len(s) for s in net.blocks]
    mapped = fs.map_efficientnet_lite0_state_dict(src, net.state_dict(), depths)
    assert len(mapped) == len(src) == len(net.state_dict())          # every tensor used and filled
    # spot checks of the name map: flat block 3 = stage 2 block 0; its _bn1 follows the depthwise conv
    assert torch.equal(mapped["blocks.2.0.bn2.running_var"], src["_blocks.3._bn1.running_var"])
    assert torch.equal(mapped["classifier.weight"], src["_fc.weight"])
    dropped = {k: v for k, v in src.items() if k != "_blocks.7._bn0.bias"}
    with pytest.raises(ValueError, match="unfilled"):
        fs.map_efficientnet_lite0_state_dict(dropped, net.state_dict(), depths)
    renamed = dict(src, **{"_extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no timm tensor"):
        fs.map_efficientnet_lite0_state_dict(renamed, net.state_dict(), depths)


def test_efficientnet_lite0_features_and_card():
    x = _images(3, 32)
    f = fs.features(x, "efficientnet_lite0", batch_size=2)
    assert f.shape == (3, 1280) and f.dtype == torch.float32
    assert torch.allclose(f, fs.features(x, "efficientnet_lite0"), atol=1e-5)       # batching-invariant
    assert torch.allclose(f, fs.features(x.expand(-1, 3, -1, -1), "efficientnet_lite0"), atol=1e-6)
    assert not torch.allclose(f[0], f[1], atol=1e-3)
    info = fs.feature_space_info("efficientnet_lite0")
    sha = hashlib.sha256(fs.efficientnet_lite0_source_path().read_bytes()).hexdigest()
    assert (info.name, info.dim, info.input_size, info.weights_sha256) == ("efficientnet_lite0", 1280, 224, sha)
    with pytest.raises(ValueError, match="NaN"):
        fs.features(torch.full((1, 1, 8, 8), float("nan")), "efficientnet_lite0")


def test_resnet18_from_local_file_matches_in_memory_model(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    x = _images(2, 32, seed=1)
    got = fs.features(x, "resnet18", weights=path)
    ref.reset_classifier(0)
    with torch.no_grad():                 # independent preprocessing: ImageNet mean/std by hand
        u = torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), size=(224, 224), mode="bilinear",
                                            align_corners=False, antialias=True)
        u = ((u + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        want = ref(u)
    assert got.shape == (2, 512)
    assert torch.allclose(got, want, atol=1e-5)
    info = fs.feature_space_info("resnet18", weights=path)
    assert info.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert str(path) in info.weights_description and info.dim == 512


def test_resnet18_env_var(tmp_path, monkeypatch):
    torch.manual_seed(1)
    path = tmp_path / "env.pth"
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), path)
    monkeypatch.setenv(fs.RESNET18_ENV, str(path))
    assert fs.feature_space_info("resnet18").weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_resnet18_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(fs.RESNET18_ENV, raising=False)
    with pytest.raises(ValueError, match=f"do not ship offline.*weights=.*{fs.RESNET18_ENV}") as e:
        fs.features(_images(1), "resnet18")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not found"):
        fs.features(_images(1), "resnet18", weights=tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match=f"cannot read weights file {garbage}"):
        fs.features(_images(1), "resnet18", weights=garbage)
    state = timm.create_model("resnet18", num_classes=1000).state_dict()
    del state["layer4.1.bn2.running_var"]              # timm alone would load this headless model non-strictly
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(ValueError, match=f"{partial} is not a resnet18 state dict.*layer4.1.bn2.running_var"):
        fs.features(_images(1), "resnet18", weights=partial)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match=f"{wrong} is not a resnet18 state dict"):
        fs.features(_images(1), "resnet18", weights=wrong)


def test_inception_space_wraps_inception_features():
    from medgen.metrics.inception import inception_features
    x = _images(2, 32, seed=2)
    assert torch.equal(fs.features(x, "inception"), inception_features(x))
    info = fs.feature_space_info("inception")
    assert info.dim == 2048 and len(info.weights_sha256) == 64
