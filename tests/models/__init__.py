"""Small CNNs written the way a user would write them, with no hypersan code inside: the proof models of
custom-model support (a MobileNetV2-style net, a DenseNet-style net, a CIFAR-style ResNet-18)."""
