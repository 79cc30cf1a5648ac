"""Tests for calibrant.models: every registered model, awkward sizes, sizes, real-batch training."""

from __future__ import annotations

import copy
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import calibrant  # noqa: F401  (registers every model)
from calibrant.models import CifarResNet, UNet
from calibrant.models._layers import pad_to_multiple, to_channels_last
from calibrant.models.resnet import _ShortcutA
from calibrant.registry import MODELS
from tests.conftest import require_dataset

ALL_MODELS = MODELS.names()
SMALL = {  # small widths so that the generic tests stay fast on a loaded 2-core machine
    "unet2d": dict(base_channels=4, depth=3),
    "unet3d": dict(base_channels=4, depth=2),
    "unet2d_paper": dict(base_channels=4),
    "dynunet": dict(filters=(4, 4, 8, 8, 16, 16)),
    "resnet8": dict(width=4),
    "resnet20": dict(width=4),
    "resnet32": dict(width=4),
    "resnet56": dict(width=4),
    "mlp": dict(hidden=(16, 16)),
    "text_mlp": dict(hidden=16),
    "text_bag": dict(embed_dim=8),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def example_input(name: str, model: nn.Module, batch: int, gen: torch.Generator) -> torch.Tensor:
    """An input of an awkward (odd, non-power-of-two) size for a registered model."""
    meta = MODELS.meta(name)
    if meta["input"] == "image":
        spatial = {2: (37, 53), 3: (13, 9, 6)}[meta["spatial_dims"]]
        return torch.randn(batch, model.in_channels, *spatial, generator=gen)
    if meta["input"] == "token_ids":
        return torch.randint(0, model.vocab_size, (batch, 11), generator=gen)
    n = getattr(model, "in_features", None) or model.vocab_size
    return torch.randn(batch, n, generator=gen)


def expected_shape(name: str, x: torch.Tensor, num_classes: int) -> tuple[int, ...]:
    if MODELS.meta(name)["input"] == "image" and MODELS.meta(name)["task"] == "segmentation":
        return (x.shape[0], num_classes, *x.shape[2:])
    return (x.shape[0], num_classes)


# --------------------------------------------------------------------------- registry


def test_registry_holds_every_model_with_metadata():
    expected = {
        "unet2d",
        "unet3d",
        "unet2d_paper",
        "dynunet",
        "resnet8",
        "resnet20",
        "resnet32",
        "resnet56",
        "mlp",
        "text_mlp",
        "text_bag",
    }
    assert expected <= set(ALL_MODELS)
    for name in ALL_MODELS:
        meta = MODELS.meta(name)
        assert meta["task"] in {"segmentation", "classification"}
        assert meta["input"] in {"image", "features", "bag_of_words", "token_ids"}
    assert MODELS.names(task="segmentation") == ["dynunet", "unet2d", "unet2d_paper", "unet3d"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_builds_with_defaults_and_outputs_logits(name, generator):
    model = MODELS.build(name)
    x = example_input(name, model, 2, generator)
    if name == "unet3d":  # default depth 4: 2^3 voxels at the bottleneck after padding to 32
        x = torch.randn(2, 1, 20, 17, 18, generator=generator)
    out = model.eval()(x)
    assert out.shape == expected_shape(name, x, model.num_classes)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_build_by_name_with_channels_and_classes(name, generator):
    model = MODELS.build(name, in_channels=5, num_classes=7, **SMALL[name])
    x = example_input(name, model, 3, generator)
    out = model(x)
    assert out.shape == expected_shape(name, x, 7)
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_state_dict_round_trip(name, generator):
    torch.manual_seed(0)
    a = MODELS.build(name, **SMALL[name])
    torch.manual_seed(1)
    b = MODELS.build(name, **SMALL[name])
    x = example_input(name, a, 4, generator)
    a.train()(x)  # updates batch-norm running statistics, which must travel too
    assert not torch.allclose(a.eval()(x), b.eval()(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_seeded_build_is_deterministic(name, generator):
    torch.manual_seed(123)
    a = MODELS.build(name, **SMALL[name])
    torch.manual_seed(123)
    b = MODELS.build(name, **SMALL[name])
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    x = example_input(name, a, 2, generator)
    torch.testing.assert_close(a.eval()(x), a(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (15, 64), (33, 17), (96, 96)])
@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_unet2d_awkward_sizes(size, norm, generator):
    net = UNet(2, 2, 3, base_channels=4, depth=3, norm=norm)
    x = torch.randn(2, 2, *size, generator=generator)
    if norm == "instance" and size == (1, 1):
        with pytest.raises(ValueError, match="spatial element"):  # 1 x 1 bottleneck
            net(x)
        return  # instance statistics need > 1 element per channel, in eval mode too
    out = net(x)
    assert out.shape == (2, 3, *size)


@pytest.mark.parametrize("size", [(13, 9, 6), (35, 51, 35), (7, 7, 7)])
@pytest.mark.parametrize("upsample", ["nearest", "transpose"])
def test_unet3d_awkward_sizes(size, upsample, generator):
    net = UNet(3, 1, 3, base_channels=4, depth=3, norm="group", upsample=upsample)
    out = net(torch.randn(1, 1, *size, generator=generator))
    assert out.shape == (1, 3, *size)


@pytest.mark.parametrize("spatial_dims,size", [(2, (37, 53)), (3, (5, 9, 7))])
def test_unet_padding_equals_explicit_zero_padding(spatial_dims, size, generator):
    """The awkward-size path is: pad with zeros at the end, run, crop. Check it by hand."""
    net = UNet(spatial_dims, 1, 2, base_channels=4, depth=2, norm="none").eval()
    x = torch.randn(1, 1, *size, generator=generator)
    padded = torch.zeros(1, 1, *[-(-s // 4) * 4 for s in size])
    padded[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)] = x
    ref = net(padded)[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]
    torch.testing.assert_close(net(x), ref)


@pytest.mark.parametrize("name", ["unet2d", "unet3d", "dynunet", "resnet8"])
def test_channels_last_equals_contiguous(name, generator):
    """Same weights in NHWC/NDHWC: logits and weight gradients agree to rounding."""
    ref = MODELS.build(name, **SMALL[name]).train()
    net = to_channels_last(MODELS.build(name, **SMALL[name]).train())
    net.load_state_dict(ref.state_dict())
    fmt = torch.channels_last_3d if MODELS.meta(name).get("spatial_dims") == 3 else None
    fmt = fmt or torch.channels_last
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    assert convs and all(m.weight.is_contiguous(memory_format=fmt) for m in convs)
    x = example_input(name, ref, 2, generator)
    out_ref, out = ref(x), net(x)

    def close(a, b, tol):  # to rounding, on the scale of the tensor (batch norm divides by std)
        a, b = a.detach(), b.detach()
        return float((a - b).abs().max()) <= tol * float(b.abs().max())

    assert close(out, out_ref, 1e-4)
    out_ref.square().mean().backward()
    out.square().mean().backward()
    for (key, p_ref), p in zip(ref.named_parameters(), net.parameters(), strict=True):
        assert close(p.grad, p_ref.grad, 1e-2), key  # a layout bug is off by O(1)


def test_channels_last_keeps_small_strided_1x1_convolutions_contiguous(generator):
    """oneDNN corrupts memory on a 1x1 stride-2 channels-last conv with 4 input channels.

    Before the exception in ``to_channels_last`` this backward crashed the process (heap
    corruption) with torch 2.13.0 on this AVX-512 CPU.
    """
    ref = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 1, stride=2))
    net = to_channels_last(copy.deepcopy(ref))
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    # strides, not is_contiguous(): a 1x1 kernel is "contiguous" in both layouts
    assert net[1].weight.stride() == (4, 1, 1, 1) and to_channels_last(net) is net
    x = torch.randn(2, 1, 64, 64, generator=generator)
    out, out_ref = net(x), ref(x)
    torch.testing.assert_close(out, out_ref)
    out.square().mean().backward()
    out_ref.square().mean().backward()
    for p, p_ref in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad)
    assert len(net[1]._forward_pre_hooks) == 1  # a second call adds no second hook


def test_channels_last_needs_one_kind_of_convolution():
    with pytest.raises(ValueError, match="MLP has no 2D or 3D convolution"):
        to_channels_last(MODELS.build("mlp", **SMALL["mlp"]))
    with pytest.raises(ValueError, match="both 2D and 3D convolutions"):
        to_channels_last(nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv3d(2, 2, 1)))


def test_pad_to_multiple_modes():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    padded, crop = pad_to_multiple(x, 4, mode="replicate")
    assert padded.shape == (1, 1, 4, 4) and torch.equal(padded[crop], x)
    assert torch.equal(padded[0, 0, :, 3], torch.tensor([2.0, 5.0, 5.0, 5.0]))
    same, _ = pad_to_multiple(x, (2, 3))
    assert same is x
    with pytest.raises(ValueError, match="entries"):
        pad_to_multiple(x, (2, 3, 4))


def _paper_unet_param_count(c_in: int, n_cls: int, base: int = 32) -> int:
    """Independent count for the MarginLoss 2-D UNet: 3x3 convs with bias, 1x1 head."""
    widths = [base * f for f in (1, 2, 4, 8, 16)]

    def conv(a, b, k=3):
        return a * b * k * k + b

    total, prev = 0, c_in
    for w in widths:  # encoder: two convs per level
        total += conv(prev, w) + conv(w, w)
        prev = w
    for i in range(4):  # decoder: concat(skip_i, up(level i+1)) -> width_i, then width_i
        total += conv(widths[i] + widths[i + 1], widths[i]) + conv(widths[i], widths[i])
    return total + conv(widths[0], n_cls, 1)


def test_unet2d_paper_preset_matches_published_architecture(generator):
    net = MODELS.build("unet2d_paper", in_channels=1, num_classes=4)
    assert n_params(net) == _paper_unet_param_count(1, 4) == 7_846_180
    assert net.pool_sizes == (2, 2, 2, 4) and net.multiple == 32
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in net.modules())
    out = net(torch.randn(1, 1, 192, 192, generator=generator))
    assert out.shape == (1, 4, 192, 192)
    override = MODELS.build("unet2d_paper", norm="batch", base_channels=8)
    assert any(isinstance(m, nn.BatchNorm2d) for m in override.modules())


def test_unet_dropout_active_only_in_training(generator):
    net = UNet(2, 1, 2, base_channels=4, depth=2, norm="none", dropout=0.5)
    x = torch.randn(2, 1, 16, 16, generator=generator)
    torch.manual_seed(0)
    a = net.train()(x)
    b = net(x)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(net.eval()(x), net(x), rtol=0, atol=0)


def test_unet_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="norm"):
        UNet(2, norm="layer")
    with pytest.raises(ValueError, match="channel_factors"):
        UNet(2, depth=3, channel_factors=(1, 2))
    with pytest.raises(ValueError, match="pool_sizes"):
        UNet(2, depth=2, pool_sizes=(2,))
    with pytest.raises(ValueError, match="spatial_dims"):
        UNet(4)
    with pytest.raises(ValueError, match="dropout"):
        UNet(2, dropout=1.0)
    net = UNet(2, 3, 2, base_channels=4, depth=2)
    with pytest.raises(ValueError, match="channels"):
        net(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="dims"):
        net(torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="floating"):
        net(torch.zeros(1, 3, 8, 8, dtype=torch.long))


# --------------------------------------------------------------------------- DynUNet (MONAI peer)


def test_dynunet_equals_monai_dynunet_on_divisible_input(generator):
    from monai.networks.nets import DynUNet

    ours = MODELS.build("dynunet", in_channels=1, num_classes=4, filters=(4, 4, 8, 8, 16, 16))
    ref = DynUNet(
        2,
        1,
        4,
        kernel_size=[3] * 6,
        strides=[1, 2, 2, 2, 2, 2],
        upsample_kernel_size=[2] * 5,
        filters=[4, 4, 8, 8, 16, 16],
        norm_name=("instance", {"affine": True}),
        res_block=True,
    )
    assert n_params(ours) == n_params(ref)
    ref.load_state_dict(ours.net.state_dict())
    x = torch.randn(2, 1, 64, 32, generator=generator)
    torch.testing.assert_close(ours(x), ref(x))
    # awkward size: equals MONAI on the zero-padded input, cropped
    x = torch.randn(1, 1, 37, 53, generator=generator)
    padded = F.pad(x, (0, 64 - 53, 0, 64 - 37))
    torch.testing.assert_close(ours(x), ref(padded)[..., :37, :53])


def test_dynunet_3d_and_deep_supervision(generator):
    net = MODELS.build(
        "dynunet",
        spatial_dims=3,
        num_classes=3,
        strides=(1, 2, 2),
        filters=(4, 8, 8),
        deep_supervision=True,
    )
    x = torch.randn(1, 1, 13, 9, 6, generator=generator)
    assert net.train()(x).shape == (1, 2, 3, 13, 9, 6)  # (B, 1 + heads, C, *spatial)
    assert net.eval()(x).shape == (1, 3, 13, 9, 6)
    with pytest.raises(ValueError, match="levels"):
        MODELS.build("dynunet", strides=(1, 2, 2), filters=(4, 8))


def test_monai_is_imported_lazily():
    code = (
        "import sys; sys.modules['monai'] = None\n"
        "import calibrant\n"
        "from calibrant.registry import MODELS\n"
        "MODELS.build('resnet20')\n"
        "try:\n"
        "    MODELS.build('dynunet')\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR', e)\n"
    )
    src = Path(calibrant.__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": ""},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "IMPORT-ERROR" in res.stdout and "calibrant[monai]" in res.stdout


# --------------------------------------------------------------------------- ResNet


def _cifar_resnet_param_count(depth: int, num_classes: int, shortcut: str) -> int:
    """Independent count: 3x3 convs without bias, BN (2 per channel), linear head."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += c_in * c * 9 + c * c * 9 + 4 * c
            if c_in != c and shortcut == "B":
                total += c_in * c + 2 * c
            c_in = c
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize(
    "depth,published", [(20, 269_722), (32, 464_154), (56, 853_018)]
)  # published: 0.27 M, 0.46 M, 0.85 M (He et al. 2016, Table 6)
def test_resnet_parameter_counts(depth, published):
    net = MODELS.build(f"resnet{depth}", num_classes=10)
    assert n_params(net) == published == _cifar_resnet_param_count(depth, 10, "A")
    net_b = MODELS.build(f"resnet{depth}", num_classes=10, shortcut="B")
    assert n_params(net_b) == _cifar_resnet_param_count(depth, 10, "B")
    assert round(published / 1e6, 2) == {20: 0.27, 32: 0.46, 56: 0.85}[depth]


def test_option_a_shortcut_reference(generator):
    x = torch.randn(2, 16, 7, 9, generator=generator)
    out = _ShortcutA(16, 32, 2)(x)
    ref = torch.zeros(2, 32, 4, 5)
    for i in range(4):
        for j in range(5):
            ref[:, 8:24, i, j] = x[:, :, 2 * i, 2 * j]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_resnet_batchnorm_train_eval(generator):
    net = MODELS.build("resnet20", num_classes=10)
    x = torch.randn(4, 3, 32, 32, generator=generator)
    rm = net.stem[1].running_mean.clone()
    net.eval()
    alone = net(x[:1])
    torch.testing.assert_close(net(x)[:1], alone)  # eval: no dependence on the batch
    assert torch.equal(net.stem[1].running_mean, rm)  # eval: statistics frozen
    net.train()
    assert not torch.allclose(net(x)[:1], net(x[:2])[:1])  # train: batch statistics
    assert not torch.equal(net.stem[1].running_mean, rm)  # train: statistics updated
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="shortcut"):
        MODELS.build("resnet20", shortcut="C")


# --------------------------------------------------------------------------- MLP and text


def test_mlp_options_and_batchnorm(generator):
    net = MODELS.build("mlp", in_channels=784, num_classes=10, hidden=(32,), batchnorm=True)
    img = torch.randn(6, 1, 28, 28, generator=generator)
    assert net(img).shape == (6, 10)  # flattened from dim 1
    net.eval()
    torch.testing.assert_close(net(img)[:2], net(img[:2]))
    assert len(MODELS.build("mlp", in_channels=5, num_classes=2, hidden=()).layers) == 1
    with pytest.raises(ValueError, match="features"):
        net(torch.randn(2, 100))
    with pytest.raises(ValueError, match="activation"):
        MODELS.build("mlp", activation="swish2")


def test_text_mlp_sparse_equals_dense(generator):
    net = MODELS.build("text_mlp", in_channels=300, num_classes=20, hidden=16).eval()
    keep = torch.rand(5, 300, generator=generator) > 0.9
    dense = torch.rand(5, 300, generator=generator) * keep
    ref = net(dense)
    torch.testing.assert_close(net(dense.to_sparse()), ref)
    torch.testing.assert_close(net(dense.to_sparse_csr()), ref)
    with pytest.raises(ValueError, match="vocab_size"):
        net(torch.rand(5, 299))


def test_text_bag_ignores_padding(generator):
    net = MODELS.build("text_bag", in_channels=50, num_classes=4, embed_dim=8)
    a = net(torch.tensor([[3, 4, 0, 0]]))
    b = net(torch.tensor([[3, 4]]))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="token ids"):
        net(torch.tensor([[50]]))


def test_no_cuda_calls_in_models():
    root = Path(calibrant.__file__).resolve().parent / "models"
    for f in root.glob("*.py"):
        assert ".cuda(" not in f.read_text(), f


# --------------------------------------------------------------------------- real data


def _train_steps(model, x, loss_fn, steps, lr):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():  # same (training) mode as the first loss: batch statistics for BN
        final = loss_fn(model(x)).item()
    return losses[0], final


def _acdc_batch(data_root, n=4, step=2):
    import h5py

    path = require_dataset(data_root, "acdc", "ACDC_training_volumes", "patient001_frame01.h5")
    with h5py.File(path, "r") as f:
        image, label = f["image"][3 : 3 + n], f["label"][3 : 3 + n]
    image = image[:, 16:208:step, 16:208:step]  # the papers' 192x192 crop, optionally subsampled
    label = label[:, 16:208:step, 16:208:step]
    return torch.from_numpy(np.ascontiguousarray(image))[:, None], torch.from_numpy(
        label.astype(np.int64)
    )


def test_unet2d_trains_on_real_acdc_slices(data_root):
    x, y = _acdc_batch(data_root)
    assert x.shape == (4, 1, 96, 96) and set(y.unique().tolist()) <= {0, 1, 2, 3}
    torch.manual_seed(0)
    net = MODELS.build("unet2d", in_channels=1, num_classes=4, base_channels=4, depth=3)
    first, final = _train_steps(net, x, lambda o: F.cross_entropy(o, y), steps=6, lr=1e-2)
    assert final < 0.8 * first


def test_unet2d_paper_trains_on_real_acdc_192(data_root):
    x, y = _acdc_batch(data_root, n=2, step=1)
    assert x.shape == (2, 1, 192, 192)
    torch.manual_seed(0)
    net = MODELS.build("unet2d_paper", num_classes=4, base_channels=4)  # paper layout, CPU width
    first, final = _train_steps(net, x, lambda o: F.cross_entropy(o, y), steps=3, lr=1e-3)
    assert final < first


def _hippocampus_case(data_root):
    import nibabel as nib

    img = require_dataset(data_root, "msd_hippocampus", "imagesTr", "hippocampus_001.nii.gz")
    lab = require_dataset(data_root, "msd_hippocampus", "labelsTr", "hippocampus_001.nii.gz")
    image = np.asarray(nib.load(img).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(lab).dataobj).astype(np.int64)
    image = (image - image.mean()) / image.std()
    # an odd-sized block around the labelled structure keeps the CPU cost at a few seconds
    centre = [int(c.mean()) for c in np.nonzero(label)]
    starts = [
        max(0, min(c - h, n - 2 * h - 1))
        for c, h, n in zip(centre, (9, 12, 8), label.shape, strict=True)
    ]
    block = tuple(slice(s, s + 2 * h + 1) for s, h in zip(starts, (9, 12, 8), strict=True))
    image, label = image[block], label[block]
    return torch.from_numpy(image)[None, None], torch.from_numpy(label)[None]


@pytest.mark.parametrize("name", ["unet3d", "dynunet"])
def test_3d_models_train_on_real_hippocampus(name, data_root):
    x, y = _hippocampus_case(data_root)
    assert x.shape[2:] == y.shape[1:] == (19, 25, 17)  # awkward (odd) sizes
    assert set(y.unique().tolist()) == {0, 1, 2}
    torch.manual_seed(0)
    kwargs = (
        dict(base_channels=4, depth=2)
        if name == "unet3d"
        else dict(spatial_dims=3, strides=(1, 2, 2), filters=(4, 8, 16))
    )
    net = MODELS.build(name, in_channels=1, num_classes=3, **kwargs)
    first, final = _train_steps(net, x, lambda o: F.cross_entropy(o, y), steps=6, lr=1e-2)
    assert final < 0.8 * first


def _cifar_batch(data_root, per_class=4):
    from PIL import Image

    path = require_dataset(data_root, "cifar10_jpg", "CIFAR-10-images.tar.gz")
    images, labels, classes = [], [], {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not (member.isfile() and len(parts) == 3 and parts[0] == "test"):
                continue
            cls = classes.setdefault(parts[1], len(classes))
            if labels.count(cls) >= per_class:
                if len(classes) == 10 and all(labels.count(c) >= per_class for c in range(10)):
                    break
                continue
            data = tar.extractfile(member).read()
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(cls)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25, torch.tensor(labels)


def test_resnet20_trains_on_real_cifar(data_root):
    x, y = _cifar_batch(data_root)
    assert x.shape == (40, 3, 32, 32) and torch.bincount(y).tolist() == [4] * 10
    torch.manual_seed(0)
    net = MODELS.build("resnet20", in_channels=3, num_classes=10)
    first, final = _train_steps(net, x, lambda o: F.cross_entropy(o, y), steps=5, lr=1e-2)
    assert final < 0.8 * first


def _mulan_scene(data_root, n=128):
    path = require_dataset(data_root, "mulan", "scene", "scene-train.arff")
    rows, n_attr, in_data = [], 0, False
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("%"):
                continue
            if line.lower().startswith("@attribute"):
                n_attr += 1
            elif line.lower().startswith("@data"):
                in_data = True
            elif in_data:
                rows.append([float(v) for v in line.split(",")])
                if len(rows) == n:
                    break
    data = torch.tensor(rows)
    assert data.shape == (n, n_attr) == (n, 294 + 6)
    return data[:, :294], data[:, 294:]


def test_mlp_trains_on_real_mulan_multilabel(data_root):
    x, y = _mulan_scene(data_root)
    assert set(y.unique().tolist()) == {0.0, 1.0}
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    torch.manual_seed(0)
    net = MODELS.build("mlp", in_channels=294, num_classes=6, hidden=(64,), batchnorm=True)
    loss = lambda o: F.binary_cross_entropy_with_logits(o, y)  # noqa: E731
    first, final = _train_steps(net, x, loss, steps=15, lr=1e-2)
    assert final < 0.7 * first


def _newsgroups_docs(data_root, per_class=5):
    path = require_dataset(data_root, "20newsgroups", "20news-bydate.tar.gz")
    docs, labels, groups = [], [], {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not (member.isfile() and len(parts) == 4 and parts[1] == "20news-bydate-train"):
                continue
            g = groups.setdefault(parts[2], len(groups))
            if labels.count(g) < per_class:
                docs.append(tar.extractfile(member).read().decode("latin-1"))
                labels.append(g)
            if len(groups) == 20 and len(labels) == 20 * per_class:
                break
    return docs, torch.tensor(labels)


def test_text_models_train_on_real_newsgroups(data_root):
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs, y = _newsgroups_docs(data_root)
    assert len(docs) == 100 and torch.bincount(y).tolist() == [5] * 20
    vec = TfidfVectorizer(max_features=2000)
    tfidf = vec.fit_transform(docs).tocoo()
    x = torch.sparse_coo_tensor(
        np.vstack([tfidf.row, tfidf.col]), tfidf.data.astype(np.float32), tfidf.shape
    ).coalesce()
    torch.manual_seed(0)
    net = MODELS.build("text_mlp", in_channels=x.shape[1], num_classes=20, dropout=0.0)
    first, final = _train_steps(net, x, lambda o: F.cross_entropy(o, y), steps=10, lr=1e-2)
    assert final < 0.7 * first

    vocab = vec.vocabulary_
    analyzer = vec.build_analyzer()
    ids = [[vocab[t] + 1 for t in analyzer(d) if t in vocab][:200] for d in docs]
    tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for i, seq in enumerate(ids):
        tokens[i, : len(seq)] = torch.tensor(seq)
    bag = MODELS.build("text_bag", in_channels=len(vocab) + 1, num_classes=20, embed_dim=32)
    first, final = _train_steps(bag, tokens, lambda o: F.cross_entropy(o, y), steps=10, lr=5e-2)
    assert final < 0.7 * first
