"""Ranking losses: hand-computed values, masking, reduction, gradients, validation, and parity with allRank and
sentence-transformers (each skipped when not installed: ``pip install --no-deps allrank`` /
``pip install --no-deps sentence-transformers``)."""

from __future__ import annotations

import doctest
import importlib.util
import math
import sys
import types

import pytest
import torch

from conftest import needs
from llmrerank.train import losses
from llmrerank.train.losses import (
    LOSSES,
    bce,
    grouped_ce,
    kl,
    lambdaloss,
    listmle,
    listnet,
    margin_mse,
    nll,
    poly1,
    ranknet,
)

F64 = torch.float64
NAMES = ["bce", "grouped_ce", "nll", "ranknet", "listnet", "poly1", "listmle", "lambdaloss", "kl", "margin_mse"]
# options that move every loss off its defaults, so masking and gradients are checked with them in play
OPTIONS = {
    "bce": {"threshold": 2.0},
    "grouped_ce": {"temperature": 0.5},
    "nll": {},
    "ranknet": {"sigma": 1.5, "weighted": True},
    "listnet": {"temperature": 2.0},
    "poly1": {"epsilon": 0.5, "temperature": 0.7},
    "listmle": {},
    "lambdaloss": {"mu": 5.0, "sigma": 0.8},
    "kl": {"temperature": 3.0},
    "margin_mse": {},
}


def sp(x: float) -> float:
    """softplus(x) = log(1 + e^x) = -log sigmoid(-x)."""
    return math.log1p(math.exp(x))


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def example(seed: int = 0, b: int = 3, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct scores and graded labels (0..3, column 0 strictly highest, so every loss accepts them)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=g, dtype=F64)
    labels = torch.randint(0, 3, (b, n), generator=g).to(F64)
    labels[:, 0] = 3.0
    return scores, labels


def test_registry_names_the_ten_losses():
    assert list(LOSSES) == NAMES
    assert LOSSES["lambdaloss"] is lambdaloss and LOSSES["margin_mse"] is margin_mse
    assert set(losses.__all__) == set(NAMES) | {"LOSSES"}


def test_module_example_runs():
    assert doctest.testmod(losses).failed == 0


# ----------------------------------------------------------------------------------------------------------------
# hand-computed values


def test_bce_binarises_at_the_threshold():
    scores, labels = t([[0.0, 2.0, -1.0]]), t([[2, 0, 1]])
    # threshold 1: targets 1, 0, 1
    assert bce(scores, labels).item() == pytest.approx((math.log(2) + sp(2) + sp(1)) / 3, abs=1e-12)
    # threshold 2: targets 1, 0, 0
    assert bce(scores, labels, threshold=2).item() == pytest.approx((math.log(2) + sp(2) + sp(-1)) / 3, abs=1e-12)


def test_bce_means_within_then_across_groups():
    scores, labels = t([[0.0, 2.0], [1.0, 0.0]]), t([[1, 0], [1, 1]])
    mask = torch.tensor([[True, True], [True, False]])
    expected = ((math.log(2) + sp(2)) / 2 + sp(-1)) / 2
    assert bce(scores, labels, mask).item() == pytest.approx(expected, abs=1e-12)


def test_grouped_ce_value_with_temperature():
    scores, labels = t([[1.0, 0.0, -1.0]]), t([[1, 0, 0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert grouped_ce(scores, labels, temperature=0.5).item() == pytest.approx(expected, abs=1e-12)
    expected_t1 = -math.log(math.exp(1) / (math.exp(1) + 1 + math.exp(-1)))
    assert grouped_ce(scores, labels).item() == pytest.approx(expected_t1, abs=1e-12)


def test_grouped_ce_negatives_may_have_any_lower_grade():
    scores = t([[1.0, 0.0, -1.0]])
    assert grouped_ce(scores, t([[3, 2, 0]])).item() == pytest.approx(grouped_ce(scores, t([[1, 0, 0]])).item())


def test_ranknet_pairs_and_weights():
    scores, labels = t([[0.0, 1.0, 2.0]]), t([[2, 1, 0]])
    # pairs (0,1), (0,2), (1,2) with score differences -1, -2, -1
    assert ranknet(scores, labels).item() == pytest.approx((sp(1) + sp(2) + sp(1)) / 3, abs=1e-12)
    weighted = (1 * sp(1) + 2 * sp(2) + 1 * sp(1)) / 3
    assert ranknet(scores, labels, weighted=True).item() == pytest.approx(weighted, abs=1e-12)
    assert ranknet(scores, labels, sigma=2).item() == pytest.approx((sp(2) + sp(4) + sp(2)) / 3, abs=1e-12)


def test_ranknet_ignores_tied_pairs():
    scores, labels = t([[0.0, 1.0, 2.0]]), t([[1, 1, 0]])
    # pairs (0,2), (1,2) only
    assert ranknet(scores, labels).item() == pytest.approx((sp(2) + sp(1)) / 2, abs=1e-12)


def test_listnet_and_poly1_values():
    # p = softmax(scores) = (1/4, 3/4); y = softmax(labels) = (3/4, 1/4)
    scores, labels = t([[0.0, math.log(3)]]), t([[math.log(3), 0.0]])
    ce = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    assert listnet(scores, labels).item() == pytest.approx(ce, abs=1e-12)
    assert poly1(scores, labels).item() == pytest.approx(ce + (0.75 * 0.75 + 0.25 * 0.25), abs=1e-12)
    assert poly1(scores, labels, epsilon=-0.5).item() == pytest.approx(ce - 0.5 * 0.625, abs=1e-12)


def test_listnet_temperature_applies_to_the_labels():
    scores, labels = t([[0.0, math.log(3)]]), t([[2.0, 0.0]])
    y0 = math.exp(1) / (math.exp(1) + 1)  # softmax([2, 0] / 2)
    expected = -(y0 * math.log(0.25) + (1 - y0) * math.log(0.75))
    assert listnet(scores, labels, temperature=2).item() == pytest.approx(expected, abs=1e-12)


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_listmle_value():
    scores, labels = t([[1.0, 2.0, 0.0]]), t([[2, 0, 1]])
    # ideal order: columns 0, 2, 1 with scores 1, 0, 2
    expected = (lse(1, 0, 2) - 1) + (lse(0, 2) - 0)
    assert listmle(scores, labels).item() == pytest.approx(expected, abs=1e-12)


def test_listmle_breaks_ties_by_column_index():
    scores, labels = t([[0.0, 3.0, 1.0]]), t([[1, 1, 0]])
    # tie between columns 0 and 1: column 0 first
    assert listmle(scores, labels).item() == pytest.approx((lse(0, 3, 1) - 0) + (lse(3, 1) - 3), abs=1e-12)
    swapped = listmle(t([[3.0, 0.0, 1.0]]), labels).item()
    assert swapped == pytest.approx((lse(3, 0, 1) - 3) + (lse(0, 1) - 0), abs=1e-12)


def test_lambdaloss_ndcg_loss2pp_by_hand():
    """A 1x3 example worked through Wang et al. 2018, eq. 13, with mu = 10 and sigma = 1."""
    scores, labels = t([[0.5, 2.0, -1.0]]), t([[2, 0, 1]])
    # by score the columns sit at positions r = (2, 1, 3); D(r) = log2(1 + r): D(1) = 1, D(2) = log2 3, D(3) = 2
    d1, d2, d3 = 1.0, math.log2(3), 2.0
    # gains 2^y - 1 = (3, 0, 1); ideal DCG over labels sorted (2, 1, 0) = 3/D(1) + 1/D(2) + 0
    max_dcg = 3 / d1 + 1 / d2
    g0, g1, g2 = 3 / max_dcg, 0.0, 1 / max_dcg

    def nll2(diff: float) -> float:  # -log2 sigmoid(diff)
        return sp(-diff) / math.log(2)

    # pair (0, 1): positions 2 and 1, gap 1
    w01 = abs(g0 - g1) * (10 * abs(1 / d1 - 1 / d2) + abs(1 / d2 - 1 / d1))
    # pair (0, 2): positions 2 and 3, gap 1
    w02 = abs(g0 - g2) * (10 * abs(1 / d1 - 1 / d2) + abs(1 / d2 - 1 / d3))
    # pair (2, 1): positions 3 and 1, gap 2
    w21 = abs(g2 - g1) * (10 * abs(1 / d2 - 1 / d3) + abs(1 / d3 - 1 / d1))
    expected = w01 * nll2(0.5 - 2.0) + w02 * nll2(0.5 + 1.0) + w21 * nll2(-1.0 - 2.0)
    assert lambdaloss(scores, labels).item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(11.036894, abs=1e-6)  # allRank gives 11.036894018 on this example


def test_lambdaloss_mu_scales_only_the_ndcg_loss2_term():
    scores, labels = t([[0.5, 2.0, -1.0]]), t([[2, 0, 1]])
    a, b, c = (lambdaloss(scores, labels, mu=mu).item() for mu in (0.0, 1.0, 2.0))
    assert c - b == pytest.approx(b - a, abs=1e-12) and b > a


def test_kl_value_and_relation_to_listnet():
    scores, labels = t([[0.0, math.log(3)]]), t([[math.log(3), 0.0]])
    # KL((3/4, 1/4) || (1/4, 3/4)) = 3/4 ln 3 - 1/4 ln 3
    assert kl(scores, labels).item() == pytest.approx(math.log(3) / 2, abs=1e-12)
    assert kl(scores, scores).item() == pytest.approx(0.0, abs=1e-12)
    # same gradient as ListNet; the values differ by the teacher's entropy
    s1 = scores.clone().requires_grad_()
    s2 = scores.clone().requires_grad_()
    kl(s1, labels, temperature=2).backward()
    listnet(s2, labels, temperature=2).backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_margin_mse_value():
    scores, teacher = t([[3.0, 1.0, 2.0]]), t([[5.0, 4.0, 0.0]])
    # student margins (2, 1), teacher margins (1, 5)
    assert margin_mse(scores, teacher).item() == pytest.approx((1 + 16) / 2, abs=1e-12)


def test_nll_is_minus_the_positive_score_and_reads_nothing_else():
    scores = t([[-1.25, 9.0, 3.0], [-0.5, -7.0, 1.0]]).requires_grad_()
    value = nll(scores, t([[0, 5, 5], [0, 0, 0]]))  # labels are not read: a "positive" graded below the rest
    assert value.item() == pytest.approx((1.25 + 0.5) / 2, abs=1e-12)
    value.backward()
    assert scores.grad.tolist() == [[-0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]]
    # a group may be the positive alone
    assert nll(t([[-2.0], [-4.0]]), t([[1], [1]])).item() == pytest.approx(3.0, abs=1e-12)


def test_poly1_with_zero_epsilon_is_listnet():
    scores, labels = example(1)
    assert poly1(scores, labels, epsilon=0, temperature=0.7).item() == pytest.approx(
        listnet(scores, labels, temperature=0.7).item(), abs=1e-12
    )


# ----------------------------------------------------------------------------------------------------------------
# masking and reduction


def pad(x: torch.Tensor, where: list[int], fill: float) -> torch.Tensor:
    """Insert columns holding ``fill`` before the given column indices (of the original)."""
    cols = list(x.unbind(dim=1))
    for i in sorted(where, reverse=True):
        cols.insert(i, torch.full_like(x[:, 0], fill))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_padding_columns_change_nothing(name):
    fn, opts = LOSSES[name], OPTIONS[name]
    scores, labels = example(2)
    plain = scores.clone().requires_grad_()
    value = fn(plain, labels, **opts)
    value.backward()

    where = [1, 3, 5]  # padding between, and after, the real columns
    padded = pad(scores, where, float("nan")).requires_grad_()
    padded_labels = pad(labels, where, float("inf"))
    mask = pad(torch.ones_like(labels, dtype=torch.bool), where, False)
    padded_value = fn(padded, padded_labels, mask, **opts)
    padded_value.backward()

    assert padded_value.item() == pytest.approx(value.item(), abs=1e-12)
    real = mask[0]
    torch.testing.assert_close(padded.grad[:, real], plain.grad)
    assert torch.equal(padded.grad[:, ~real], torch.zeros_like(padded.grad[:, ~real]))


@pytest.mark.parametrize("name", NAMES)
def test_ragged_padding_matches_groups_one_by_one(name):
    fn, opts = LOSSES[name], OPTIONS[name]
    scores, labels = example(3, b=3, n=6)
    lengths = [6, 4, 3]
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    scores = scores.masked_fill(~mask, 1e6)  # huge scores in padding would dominate any softmax that saw them
    each = [fn(scores[i : i + 1, :k], labels[i : i + 1, :k], **opts).item() for i, k in enumerate(lengths)]
    assert fn(scores, labels, mask, **opts).item() == pytest.approx(sum(each) / 3, abs=1e-12)


# a group that, for each loss, has nothing to learn from (nll has none: every group has its positive)
DEAD = {
    "bce": (t([[0.3, -0.2]]), t([[1, 0]]), torch.tensor([[False, False]])),
    "grouped_ce": (t([[0.3, -0.2]]), t([[1, 0]]), torch.tensor([[True, False]])),
    "ranknet": (t([[0.3, -0.2]]), t([[1, 1]]), None),
    "listnet": (t([[0.3, -0.2]]), t([[1, 0]]), torch.tensor([[False, True]])),
    "poly1": (t([[0.3, -0.2]]), t([[1, 0]]), torch.tensor([[True, False]])),
    "listmle": (t([[0.3, -0.2]]), t([[1, 0]]), torch.tensor([[True, False]])),
    "lambdaloss": (t([[0.3, -0.2]]), t([[0, 0]]), None),
    "kl": (t([[0.3, -0.2]]), t([[1, 0]]), torch.tensor([[False, True]])),
    "margin_mse": (t([[0.3, -0.2]]), t([[1, 0]]), torch.tensor([[True, False]])),
}


@pytest.mark.parametrize("name", list(DEAD))
def test_groups_without_anything_to_learn_are_left_out_of_the_mean(name):
    fn = LOSSES[name]
    live_scores, live_labels = t([[1.0, -0.5]]), t([[2, 0]])
    dead_scores, dead_labels, dead_mask = DEAD[name]
    if dead_mask is None:
        dead_mask = torch.ones_like(dead_labels, dtype=torch.bool)
    scores = torch.cat([live_scores, dead_scores])
    labels = torch.cat([live_labels, dead_labels])
    mask = torch.cat([torch.ones_like(live_labels, dtype=torch.bool), dead_mask])
    alone = fn(live_scores, live_labels).item()
    assert alone > 0.01
    assert fn(scores, labels, mask).item() == pytest.approx(alone, abs=1e-12)


@pytest.mark.parametrize("name", list(DEAD))
def test_no_contributing_group_gives_a_zero_with_grad(name):
    dead_scores, dead_labels, dead_mask = DEAD[name]
    scores = dead_scores.clone().requires_grad_()
    value = LOSSES[name](scores, dead_labels, dead_mask)
    assert value.item() == 0.0 and value.requires_grad and value.dim() == 0
    value.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_a_zero(name):
    scores = torch.zeros(0, 4, dtype=F64, requires_grad=True)
    value = LOSSES[name](scores, torch.zeros(0, 4, dtype=F64))
    assert value.item() == 0.0 and value.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64_with_padding(name):
    fn, opts = LOSSES[name], OPTIONS[name]
    scores, labels = example(4, b=3, n=5)
    mask = torch.tensor([[True] * 5, [True, True, False, True, True], [True, True, True, False, False]])
    scores.requires_grad_()
    assert torch.autograd.gradcheck(lambda s: fn(s, labels, mask, **opts), (scores,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow_only_into_scores(name):
    scores, labels = example(5)
    scores.requires_grad_()
    labels.requires_grad_()
    LOSSES[name](scores, labels, **OPTIONS[name]).backward()
    assert labels.grad is None and scores.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_large_scores_stay_finite(name):
    scores, labels = example(6)
    scores = (scores * 1e4).requires_grad_()
    value = LOSSES[name](scores, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(scores.grad).all()


def test_integer_labels_and_float32_scores():
    scores = torch.tensor([[1.0, 0.0, -1.0]])
    value = grouped_ce(scores, torch.tensor([[1, 0, 0]]))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(-math.log(math.e / (math.e + 1 + math.exp(-1))), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# validation


S, Y = t([[1.0, 0.0, -1.0]]), t([[2, 1, 0]])
BAD = [
    (lambda: listnet([[1.0, 0.0]], Y), "listnet: scores must be a torch.Tensor, got list"),
    (lambda: listnet(S, [[2, 1, 0]]), "listnet: labels must be a torch.Tensor, got list"),
    (lambda: listnet(S[0], Y[0]), r"listnet: scores must be 2-D \[B, N\], got shape \(3,\)"),
    (lambda: ranknet(S, Y[:, :2]), r"ranknet: labels shape \(1, 2\) does not match scores shape \(1, 3\)"),
    (lambda: bce(torch.tensor([[1, 0]]), torch.tensor([[1, 0]])), "scores must be a floating-point tensor"),
    (lambda: listmle(S, Y, torch.ones(1, 3)), "listmle: mask must be a bool tensor .* got torch.float32"),
    (lambda: listmle(S, Y, torch.ones(1, 2, dtype=torch.bool)), r"mask shape \(1, 2\) does not match"),
    (lambda: kl(t([[1.0, float("nan")]]), t([[0, 0]])), r"kl: scores must be finite .* got nan at \[0, 1\]"),
    (lambda: kl(t([[1.0, 0.0]]), t([[0, float("inf")]])), r"kl: labels must be finite .* got inf at \[0, 1\]"),
    (lambda: grouped_ce(S, Y, temperature=0), "grouped_ce: temperature must be a finite number > 0, got 0.0"),
    (lambda: listnet(S, Y, temperature=-1), "listnet: temperature must be a finite number > 0"),
    (lambda: poly1(S, Y, temperature=float("inf")), "poly1: temperature must be a finite number > 0"),
    (lambda: kl(S, Y, temperature=0), "kl: temperature must be a finite number > 0"),
    (lambda: poly1(S, Y, epsilon=-1.5), "poly1: epsilon must be at least -1, got -1.5"),
    (lambda: ranknet(S, Y, sigma=0), "ranknet: sigma must be a finite number > 0"),
    (lambda: lambdaloss(S, Y, sigma=-1), "lambdaloss: sigma must be a finite number > 0"),
    (lambda: lambdaloss(S, Y, mu=-1), "lambdaloss: mu must be at least 0, got -1.0"),
    (lambda: lambdaloss(S, t([[1, -1, 0]])), r"lambdaloss: labels must be >= 0 .* got -1.0 at \[0, 1\]"),
    (lambda: bce(S, Y, threshold=float("nan")), "bce: threshold must be finite"),
    (
        lambda: grouped_ce(S, t([[1, 1, 0]])),
        r"grouped_ce: column 0 must be the single positive.* labels\[0, 0\] = 1.0 and labels\[0, 1\] = 1.0",
    ),
    (lambda: grouped_ce(S, t([[0, 1, 0]])), r"column 0 must be the single positive"),
    (
        lambda: grouped_ce(S, Y, torch.tensor([[False, True, True]])),
        r"grouped_ce: column 0 \(the positive\) must be valid \(mask=True\) in every group; not in \[0\]",
    ),
    (lambda: margin_mse(S, Y, torch.tensor([[False, True, True]])), r"margin_mse: column 0 \(the positive\)"),
    (lambda: margin_mse(torch.zeros(2, 0), torch.zeros(2, 0)), "margin_mse: needs column 0"),
    (lambda: nll(S, Y, torch.tensor([[False, True, True]])), r"nll: column 0 \(the positive\) must be valid"),
    (lambda: nll(t([[float("-inf"), 0.0]]), t([[1, 0]])), r"nll: scores must be finite .* got -inf at \[0, 0\]"),
]


@pytest.mark.parametrize(("call", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_inputs_raise_precise_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_grouped_ce_checks_labels_only_at_valid_columns():
    # column 2 is padding and carries a label above the positive's: not an error
    mask = torch.tensor([[True, True, False]])
    assert grouped_ce(S, t([[1, 0, 5]]), mask).item() == pytest.approx(-math.log(math.e / (math.e + 1)))


# ----------------------------------------------------------------------------------------------------------------
# parity with allRank (its formulas, run on the same tensors)


@pytest.fixture(scope="module")
def allrank():
    """allRank's loss files, loaded one by one: its package ``__init__`` pulls in torchvision, gcsfs and sklearn
    for data loading, which the losses do not use, so those two modules are stubbed with the constants the losses
    import (the padding label -1 and eps 1e-10, allRank's values)."""
    needs("allrank", "parity with allRank", "pip install --no-deps allrank")
    import allrank.data  # noqa: F401  (empty package __init__ files)
    import allrank.models  # noqa: F401

    root = importlib.util.find_spec("allrank").submodule_search_locations[0]
    stubs = {
        "allrank.data.dataset_loading": types.SimpleNamespace(PADDED_Y_VALUE=-1),
        "allrank.models.losses": types.SimpleNamespace(DEFAULT_EPS=1e-10),
    }
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        loaded = {}
        for name in ("lambdaLoss", "listNet", "listMLE", "rankNet"):
            spec = importlib.util.spec_from_file_location(f"_allrank_{name}", f"{root}/models/losses/{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return types.SimpleNamespace(
        lambdaLoss=loaded["lambdaLoss"].lambdaLoss,
        listNet=loaded["listNet"].listNet,
        listMLE=loaded["listMLE"].listMLE,
        rankNet=loaded["rankNet"].rankNet,
        rankNet_weightByGTDiff=loaded["rankNet"].rankNet_weightByGTDiff,
    )


def ragged(seed: int, b: int = 4, n: int = 8, distinct: bool = False):
    """Scores, graded labels 0..4 (or distinct reals), and a mask with 3..n valid columns per group."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=g, dtype=F64) * 2
    labels = torch.rand(b, n, generator=g, dtype=F64) * 4 if distinct else torch.randint(0, 5, (b, n), generator=g)
    mask = torch.rand(b, n, generator=g) < 0.75
    mask[:, :3] = True
    return scores, labels.to(F64), mask


def allrank_padded(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return labels.masked_fill(~mask, -1)  # allRank marks padding with the label -1


def per_group_mean(fn, scores, labels, mask) -> float:
    values = [fn(scores[i : i + 1, mask[i]], labels[i : i + 1, mask[i]]).item() for i in range(len(scores))]
    return sum(values) / len(values)


def test_lambdaloss_matches_allrank_ndcg_loss2pp(allrank):
    for seed in range(5):
        scores, labels, mask = ragged(seed)
        # allRank sums over all pairs of the batch; one group at a time that is our per-group loss
        reference = per_group_mean(
            lambda s, y: allrank.lambdaLoss(s, y, weighing_scheme="ndcgLoss2PP_scheme", mu=10.0, sigma=1.0),
            scores,
            labels,
            mask,
        )
        # allRank computes its discounts in float32, hence the relative 1e-7
        assert lambdaloss(scores, labels, mask).item() == pytest.approx(reference, rel=1e-6)
        padded = allrank.lambdaLoss(scores[:1], allrank_padded(labels, mask)[:1], weighing_scheme="ndcgLoss2PP_scheme")
        assert lambdaloss(scores[:1], labels[:1], mask[:1]).item() == pytest.approx(padded.item(), rel=1e-6)


def test_listnet_matches_allrank(allrank):
    scores, labels, mask = ragged(10)
    # allRank adds eps = 1e-10 to p before the log (it needs it for padding): differences of order eps / p
    reference = allrank.listNet(scores, allrank_padded(labels, mask))
    assert listnet(scores, labels, mask).item() == pytest.approx(reference.item(), abs=1e-7)


def test_listmle_matches_allrank_without_ties(allrank):
    scores, labels, mask = ragged(11, distinct=True)
    reference = allrank.listMLE(scores, allrank_padded(labels, mask), eps=0.0)
    assert listmle(scores, labels, mask).item() == pytest.approx(reference.item(), abs=1e-10)


def test_ranknet_matches_allrank(allrank):
    scores, labels, mask = ragged(12)
    # allRank's BCEWithLogitsLoss means over the pairs of the whole batch: compare one group at a time
    for i in range(len(scores)):
        s, y, m = scores[i : i + 1], labels[i : i + 1], mask[i : i + 1]
        plain = allrank.rankNet(s.float(), allrank_padded(y, m).float()).item()
        assert ranknet(s, y, m).item() == pytest.approx(plain, rel=1e-6)
        weighted = allrank.rankNet_weightByGTDiff(s.float(), allrank_padded(y, m).float()).item()
        assert ranknet(s, y, m, weighted=True).item() == pytest.approx(weighted, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# parity with sentence-transformers' cross-encoder losses, driven by fixed logits


@pytest.fixture(scope="module")
def st():
    needs("sentence_transformers", "parity with sentence-transformers", "pip install --no-deps sentence-transformers")
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.cross_encoder import losses as st_losses

    class FixedLogits(CrossEncoder):
        """A stand-in CrossEncoder whose "documents" are indices into a fixed tensor of logits."""

        num_labels = 1
        device = torch.device("cpu")

        def __init__(self, logits: torch.Tensor):
            torch.nn.Module.__init__(self)
            self.flat = logits.reshape(-1).float()

        def preprocess(self, pairs, prompt=None, task=None, **kwargs):
            return {"index": torch.tensor([int(doc) for _, doc in pairs])}

        def forward(self, inputs, **kwargs):
            return {"scores": self.flat[inputs["index"]].unsqueeze(-1)}

    return types.SimpleNamespace(losses=st_losses, model=FixedLogits)


def st_inputs(b: int, n: int):
    queries = [f"q{i}" for i in range(b)]
    docs = [[str(i * n + j) for j in range(n)] for i in range(b)]
    return queries, docs


def test_listwise_and_pairwise_match_sentence_transformers(st):
    b, n = 3, 5
    scores, labels, _ = ragged(20, b=b, n=n, distinct=True)
    model = st.model(scores)
    queries, docs = st_inputs(b, n)
    rows = list(labels.float())
    L = st.losses

    assert listnet(scores, labels).item() == pytest.approx(L.ListNetLoss(model)([queries, docs], rows).item(), abs=1e-5)
    reference = L.ListMLELoss(model, respect_input_order=False)([queries, docs], rows).item()
    assert listmle(scores, labels).item() == pytest.approx(reference, abs=1e-5)
    # distinct labels: every group has n(n-1)/2 pairs, so ST's mean over the batch's pairs is our mean of means
    reference = L.RankNetLoss(model, reduction_log="natural")([queries, docs], rows).item()
    assert ranknet(scores, labels).item() == pytest.approx(reference, abs=1e-5)
    # ST's LambdaLoss means over pairs; ours sums within a group
    lam = L.LambdaLoss(model, weighting_scheme=L.NDCGLoss2PPScheme(mu=10.0))
    for i in range(b):
        reference = lam([queries[i : i + 1], docs[i : i + 1]], rows[i : i + 1]).item() * n * (n - 1) / 2
        assert lambdaloss(scores[i : i + 1], labels[i : i + 1]).item() == pytest.approx(reference, rel=1e-5)


def test_pointwise_and_distillation_match_sentence_transformers(st):
    b, n = 3, 4
    scores, labels = example(21, b=b, n=n)
    model = st.model(scores)
    queries, docs = st_inputs(b, n)
    L = st.losses

    columns = [[docs[i][j] for i in range(b)] for j in range(n)]
    reference = L.MarginMSELoss(model)([queries, *columns], labels.float()).item()
    assert margin_mse(scores, labels).item() == pytest.approx(reference, abs=1e-5)

    flat_queries = [q for q in queries for _ in range(n)]
    flat_docs = [d for row in docs for d in row]
    targets = (labels >= 2).float().reshape(-1)
    reference = L.BinaryCrossEntropyLoss(model)([flat_queries, flat_docs], targets).item()
    assert bce(scores, labels, threshold=2).item() == pytest.approx(reference, abs=1e-5)

    mnrl = L.MultipleNegativesRankingLoss(model, scale=1 / 0.5, activation_fn=None)
    reference = mnrl.calculate_loss([scores[:, j].float() for j in range(n)], b).item()
    assert grouped_ce(scores, labels, temperature=0.5).item() == pytest.approx(reference, abs=1e-5)


def test_kl_matches_torch_kl_div():
    scores, labels = example(22)
    reference = torch.nn.functional.kl_div(
        torch.log_softmax(scores, -1), torch.log_softmax(labels / 2, -1), reduction="batchmean", log_target=True
    )
    assert kl(scores, labels, temperature=2).item() == pytest.approx(reference.item(), abs=1e-12)
