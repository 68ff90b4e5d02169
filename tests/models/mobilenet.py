"""A MobileNetV2-style net: inverted residuals (expand 1x1, depthwise 3x3, project 1x1), ReLU6."""
from torch import nn


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(conv_bn(cin, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   conv_bn(hidden, cout, 1, act=False))

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res else out


class MobileNetV2Tiny(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        self.stem = conv_bn(in_channels, width, 3, 1)
        self.blocks = nn.Sequential(InvertedResidual(width, width, 1, 2), InvertedResidual(width, 2 * width, 2, 2),
                                    InvertedResidual(2 * width, 2 * width, 1, 2))
        self.last = conv_bn(2 * width, 4 * width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.last(self.blocks(self.stem(x)))).flatten(1))


def build(num_classes=10, in_channels=1, width=8):
    return MobileNetV2Tiny(num_classes, in_channels, width)
