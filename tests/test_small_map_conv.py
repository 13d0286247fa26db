"""The convnet's small-map convolution computes what ``nn.Conv2d`` computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backbones.convnet import ConvNet
from backbones.small_map_conv import SmallMapConv2d


@pytest.mark.parametrize("side", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_conv2d_forward_and_gradients(side, stride, bias, channels_last):
    """Output and the gradients of input, weight and bias equal ``nn.Conv2d``'s on
    maps below and above the dense-path threshold (3×3 kernel: H·W ≤ 9)."""
    torch.manual_seed(0)
    reference = nn.Conv2d(6, 5, 3, stride=stride, padding=1, bias=bias).double()
    small = SmallMapConv2d(6, 5, 3, stride=stride, padding=1, bias=bias).double()
    small.load_state_dict(reference.state_dict())
    x = torch.randn(4, 6, side, side, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn_like(reference(x))
    outs, grads = [], []
    for conv in (reference, small):
        inp = x.clone().requires_grad_()
        out = conv(inp)
        out.backward(grad)
        outs.append(out)
        grads.append([inp.grad] + [p.grad for p in conv.parameters()])
    torch.testing.assert_close(outs[1], outs[0])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want)


def test_bf16_autocast_gives_bf16_close_to_fp32():
    torch.manual_seed(0)
    conv = SmallMapConv2d(32, 16, 3, padding=1)
    x = torch.randn(8, 32, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), conv(x), atol=0.05, rtol=0.02)


def test_training_under_cpu_bf16_autocast_runs_4x4_maps_densely():
    """4×4 maps with few channels take the dense path only when training under bf16
    autocast on the CPU, and it agrees with ``nn.Conv2d`` there too (bf16 tolerance)."""
    torch.manual_seed(0)
    reference = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    small = SmallMapConv2d(16, 32, 3, stride=2, padding=1, bias=False)
    small.load_state_dict(reference.state_dict())
    x = torch.randn(8, 16, 4, 4)
    assert not small._runs_dense(x)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert small._runs_dense(x)
        with torch.no_grad():
            assert not small._runs_dense(x)
        assert not SmallMapConv2d(256, 256, 3, padding=1)._runs_dense(torch.randn(2, 256, 4, 4))
        outs, grads = [], []
        for conv in (reference, small):
            inp = x.clone().requires_grad_()
            out = conv(inp)
            out.float().square().sum().backward()
            outs.append(out.float())
            grads.append([inp.grad, conv.weight.grad])
    torch.testing.assert_close(outs[1], outs[0], atol=0.05, rtol=0.02)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)


def test_convnet_state_dict_loads_into_plain_conv2d_layers():
    """Checkpoints keep nn.Conv2d's keys: a convnet built from plain layers loads them."""
    net = ConvNet(in_chans=1)
    plain = ConvNet(in_chans=1)
    for stage in plain.stages:
        for i, layer in enumerate(stage):
            if isinstance(layer, nn.Conv2d):
                stage[i] = nn.Conv2d(layer.in_channels, layer.out_channels, 3,
                                     stride=layer.stride, padding=1, bias=False)
    plain.load_state_dict(net.state_dict(), strict=True)
    net.eval(), plain.eval()
    x = torch.randn(3, 1, 8, 8)  # a jigsaw tile: 8 → 8 → 4 → 2 → 1 px maps
    torch.testing.assert_close(net(x), plain(x), atol=1e-5, rtol=1e-4)


def test_refuses_what_it_does_not_implement():
    with pytest.raises(ValueError, match="square kernels"):
        SmallMapConv2d(3, 3, 3, padding=1, dilation=2)
    with pytest.raises(ValueError, match="square kernels"):
        SmallMapConv2d(3, 3, 3, padding="same")
