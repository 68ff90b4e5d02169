import torch

from hypersan.masks import binarize, combine_max, combine_maxabs, keep_decision


def test_ste_forward_is_hard_threshold():
    u = torch.tensor([[0.05, 0.2, 0.5, 0.09], [1.0, 0.0, 0.11, 0.3]])
    m = binarize(u, threshold=0.1, temp=0.1)
    assert torch.equal(m, (u > 0.1).float())


def test_keep_rule_keeps_top_channels_when_all_below_threshold():
    u = torch.tensor([[0.01, 0.05, 0.02, 0.0]])
    assert torch.equal(keep_decision(u, 0.1, 1), torch.tensor([[False, True, False, False]]))
    assert keep_decision(u, 0.1, 2).sum().item() == 2
    assert keep_decision(u, 0.1, 10).all()  # min_keep larger than the site keeps everything


def test_surrogate_gradient_is_bounded_and_peaks_at_threshold():
    u = torch.tensor([[0.1, 0.5, 5.0, 100.0]], requires_grad=True)
    binarize(u, threshold=0.1, temp=0.1).sum().backward()
    g = u.grad[0]
    assert torch.all(g <= 1 / (4 * 0.1) + 1e-6)
    assert g[0] == g.max() and g[3] < 1e-6  # far above the threshold: no push upward


def test_combine_max_and_maxabs():
    values = torch.tensor([[1.0, -3.0, 0.5], [2.0, 1.0, -0.7], [0.1, 0.2, 0.3]])
    select = torch.tensor([[True, True, False], [False, False, True], [True, False, True]])
    assert torch.equal(combine_max(values, select), torch.tensor([[2.0, 1.0, 0.5], [0.1, 0.2, 0.3], [1.0, 0.2, 0.5]]))
    assert torch.equal(combine_maxabs(values, select), torch.tensor([[2.0, -3.0, -0.7], [0.1, 0.2, 0.3], [1.0, -3.0, 0.5]]))
