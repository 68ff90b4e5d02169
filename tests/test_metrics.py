import pytest
from torch import nn

from hypersan.metrics import conv_macs


def test_conv_macs_counts_convs_and_rounds_output_channels_up():
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 20, 1, stride=2))
    # 8x8 input: 64*9*3*5 for the 3x3 conv, 16*1*5*20 for the strided 1x1 conv
    assert conv_macs(net, (3, 8, 8)) == 64 * 9 * 3 * 5 + 16 * 5 * 20
    assert conv_macs(net, (3, 8, 8), block=16) == 64 * 9 * 3 * 16 + 16 * 5 * 32
    with pytest.raises(ValueError, match="block"):
        conv_macs(net, (3, 8, 8), block=0)
