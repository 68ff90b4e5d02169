"""A DenseNet-style net: each layer of a block concatenates its output to its input."""
import torch
from torch import nn


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], dim=1)


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(torch.relu(self.bn(x))))


class DenseNetTiny(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, growth=6):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 2 * growth, 3, 1, 1, bias=False)
        c = 2 * growth
        self.block1 = nn.Sequential(DenseLayer(c, growth), DenseLayer(c + growth, growth))
        c += 2 * growth
        self.trans = Transition(c, c // 2)
        c //= 2
        self.block2 = nn.Sequential(DenseLayer(c, growth), DenseLayer(c + growth, growth))
        c += 2 * growth
        self.bn = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.classifier(torch.relu(self.bn(x)).mean(dim=(2, 3)))


def build(num_classes=10, in_channels=1, growth=6):
    return DenseNetTiny(num_classes, in_channels, growth)
