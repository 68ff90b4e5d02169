import torch

from hypersan.nn.masks import binarize, combine_max, combine_maxabs, keep_decision


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
    want = torch.tensor([[2.0, -3.0, -0.7], [0.1, 0.2, 0.3], [1.0, -3.0, 0.5]])
    assert torch.equal(combine_maxabs(values, select), want)


def test_keep_multiple_rounds_counts_down_and_keeps_the_top_utilities():
    gen = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.11, 0.3, 64)[:, None]  # rows from ~4 to ~27 utilities above the threshold
    u = torch.rand(64, 40, generator=gen) * scale
    above = u > 0.1
    keep = keep_decision(u, 0.1, 1, 8)
    n = keep.sum(dim=1)
    want = (torch.div(above.sum(dim=1), 8, rounding_mode="floor") * 8).clamp(min=8)
    assert torch.equal(n, want)
    assert (n % 8 == 0).all()
    # only the minimum may reach below the threshold: a row keeps a channel below it iff fewer than 8 are above
    few = above.sum(dim=1) < 8
    assert few.any() and (~few).any()  # both kinds of row are present
    assert torch.equal((keep & ~above).any(dim=1), few)
    # the kept channels are the row's highest utilities
    kept_min = torch.where(keep, u, torch.inf).min(dim=1).values
    dropped_max = torch.where(keep, -torch.inf, u).max(dim=1).values
    assert (kept_min > dropped_max).all()
    assert torch.equal(keep_decision(u, 0.1, 1, 1), u > 0.1)  # multiple 1: the plain rule


def test_keep_rule_breaks_ties_by_lower_index():
    # all-zero utilities keep exactly min_keep channels, the lowest indices (formerly every tied channel)
    for k in (1, 3):
        keep = keep_decision(torch.zeros(2, 8), 0.1, k)
        assert keep.sum(dim=1).tolist() == [k, k] and keep[:, :k].all()
    # a tie at the k-th value below the threshold: the lower index wins
    u = torch.tensor([[0.02, 0.05, 0.01, 0.05, 0.0]])
    assert keep_decision(u, 0.1, 1).tolist() == [[False, True, False, False, False]]
    assert keep_decision(u, 0.1, 2).tolist() == [[False, True, False, True, False]]
    # ties above the threshold are all kept, whatever min_keep
    u = torch.tensor([[0.5, 0.5, 0.5, 0.0, 0.5]])
    assert keep_decision(u, 0.1, 1).tolist() == [[True, True, True, False, True]]
    # the hard mask of binarize follows the same rule
    assert binarize(torch.zeros(1, 8), 0.1, 0.1, min_keep=2).tolist() == [[1.0, 1.0] + [0.0] * 6]


def test_keep_multiple_bounds_and_ties():
    # nothing above the threshold and all utilities tied: exactly one block, not the whole site
    assert keep_decision(torch.zeros(2, 32), 0.1, 1, 16).sum(dim=1).tolist() == [16, 16]
    # a site narrower than the multiple keeps everything; one that is not a multiple rounds down
    assert keep_decision(torch.rand(1, 10), 0.5, 1, 16).sum().item() == 10
    assert keep_decision(torch.ones(1, 31), 0.5, 1, 16).sum().item() == 16
    assert keep_decision(torch.ones(1, 32), 0.5, 1, 16).sum().item() == 32
    assert keep_decision(torch.rand(1, 64), 2.0, 20, 16).sum().item() == 32  # min_keep 20: two blocks
