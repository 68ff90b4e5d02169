"""Monotonicity of kept channels and the out-of-subtask false-positive rate, on hand-built inputs."""
import pytest
import torch

from hypersan.prune.metrics import containment_violations, out_of_subtask_false_positive_rate


def test_containment_counts_channels_the_superset_drops():
    small = {"a": torch.tensor([0, 2, 5]), "b": torch.tensor([1])}
    large = {"a": torch.tensor([0, 1, 2, 3]), "b": torch.tensor([1, 4])}
    assert containment_violations(small, large) == (1, 4)  # channel 5 of site a is not kept by the superset
    assert containment_violations(large, large) == (0, 6)
    masks_small = {"a": torch.tensor([[1.0, 0, 1, 0, 0, 1]]), "b": torch.tensor([[0.0, 1, 0, 0, 0]])}
    masks_large = {"a": torch.tensor([[1.0, 1, 1, 1, 0, 0]]), "b": torch.tensor([[0.0, 1, 0, 0, 1]])}
    assert containment_violations(masks_small, masks_large) == (1, 4)  # 0/1 masks read as kept sets


def test_false_positive_rate_counts_outside_images_where_any_output_fires():
    classes = [7, 8]
    labels = torch.tensor([7, 8, 0, 1, 2, 3])
    logits = torch.tensor([[5.0, -1], [-2, 3], [0.5, -1], [-1, -0.1], [-3, 2.0], [-0.2, -0.3]])
    # outside images: labels 0, 1, 2, 3 -> rows 2..5; rows 2 and 4 fire
    assert out_of_subtask_false_positive_rate(logits, labels, classes) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="columns"):
        out_of_subtask_false_positive_rate(logits[:, :1], labels, classes)
    with pytest.raises(ValueError, match="outside"):
        out_of_subtask_false_positive_rate(logits[:2], labels[:2], classes)
