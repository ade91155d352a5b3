"""Ranking losses: pure functions of ``scores [B, N]``, ``labels [B, N]`` and ``mask [B, N]`` to a scalar.

Every loss has the same contract::

    loss(scores, labels, mask=None, *, options...) -> scalar tensor

- ``scores``: the model's real-valued scores (logits), floating point, one row per group (query), one column
  per candidate. Gradients flow into ``scores`` only.
- ``labels``: graded relevance labels of the same shape (any real or integer values), or, for the
  distillation losses ``kl`` and ``margin_mse``, a teacher's scores. Labels are targets: they are detached.
- ``mask``: bool, ``True`` = a real column, ``False`` = padding; ``None`` means every column is real. Padded
  columns are ignored entirely, whatever ``scores`` and ``labels`` hold there (even NaN or inf): they change
  neither the value nor the gradient of any other column, and receive a gradient of exactly zero.

Reduction: each group ``b`` gets a loss ``L_b`` (defined per function below); the result is the mean of
``L_b`` over the groups that *contribute*. A group that has nothing to learn from (no valid pair, no valid
negative, fewer than two valid columns; each function says which) contributes nothing and is left out of the
mean, rather than pulling it towards zero. When no group contributes, the result is a zero that is still
connected to ``scores`` (``backward()`` works and gives zero gradients).

Inputs are validated up front with a ``ValueError`` naming the problem: both tensors 2-D with equal shapes,
``scores`` floating point, ``mask`` bool, no NaN or inf at valid positions, options in range, and each loss's
own requirements (e.g. ``grouped_ce`` needs column 0 to be the single positive).

``LOSSES`` maps the names the trainer uses (``"bce"``, ``"grouped_ce"``, ``"nll"``, ``"ranknet"``,
``"listnet"``, ``"poly1"``, ``"listmle"``, ``"lambdaloss"``, ``"kl"``, ``"margin_mse"``) to these functions.

Example::

    >>> import torch
    >>> from llmrerank.train.losses import LOSSES, grouped_ce, listnet
    >>> scores = torch.tensor([[2.0, 0.5, -1.0], [1.0, 1.5, 0.0]], requires_grad=True)
    >>> labels = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[True, True, True], [True, True, False]])  # the second group has one padding column
    >>> loss = grouped_ce(scores, labels, mask, temperature=1.0)
    >>> loss.backward()
    >>> round(loss.item(), 4), scores.grad[1, 2].item()
    (0.6077, 0.0)
    >>> round(LOSSES["listnet"](scores, labels, mask).item(), 4) == round(listnet(scores, labels, mask).item(), 4)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "LOSSES",
    "bce",
    "grouped_ce",
    "kl",
    "lambdaloss",
    "listmle",
    "listnet",
    "margin_mse",
    "nll",
    "poly1",
    "ranknet",
]

_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------------------
# validation and masked primitives


def _check(
    name: str, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the three inputs; return (scores with padding zeroed, detached labels with padding zeroed, mask)."""
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"{name}: scores must be a torch.Tensor, got {type(scores).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name}: labels must be a torch.Tensor, got {type(labels).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"{name}: scores must be 2-D [B, N], got shape {tuple(scores.shape)}")
    if labels.shape != scores.shape:
        raise ValueError(
            f"{name}: labels shape {tuple(labels.shape)} does not match scores shape {tuple(scores.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"{name}: scores must be a floating-point tensor, got dtype {scores.dtype}")
    if labels.is_complex():
        raise ValueError(f"{name}: labels must be real numbers, got dtype {labels.dtype}")
    if mask is None:
        mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    else:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"{name}: mask must be a bool tensor (True = real column), got {got}")
        if mask.shape != scores.shape:
            raise ValueError(
                f"{name}: mask shape {tuple(mask.shape)} does not match scores shape {tuple(scores.shape)}"
            )
        mask = mask.to(scores.device)
    labels = labels.detach().to(device=scores.device, dtype=scores.dtype)
    for what, t in (("scores", scores.detach()), ("labels", labels)):
        bad = ~torch.isfinite(t) & mask
        if bad.any():
            b, n = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{name}: {what} must be finite at valid (mask=True) positions, got {t[b, n].item()} at [{b}, {n}]"
            )
    # Padding is replaced by zeros here, so nothing downstream ever sees a NaN or inf; the replaced positions get
    # a zero gradient.
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    return torch.where(mask, scores, zero), torch.where(mask, labels, zero), mask


def _positive(name: str, option: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: {option} must be a finite number > 0, got {value}")
    return value


def _finite(name: str, option: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: {option} must be finite, got {value}")
    return value


def _need_column0(name: str, mask: torch.Tensor) -> None:
    if mask.shape[1] == 0:
        raise ValueError(f"{name}: needs column 0 (the positive), but scores have no columns")
    if not bool(mask[:, 0].all()):
        rows = (~mask[:, 0]).nonzero().flatten().tolist()
        raise ValueError(f"{name}: column 0 (the positive) must be valid (mask=True) in every group; not in {rows}")


def _log_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax over the valid columns of each row; 0 at padded columns and in rows without a valid column."""
    filled = torch.where(mask, x, _NEG_INF)
    # A row with no valid column would be all -inf (NaN softmax); give it zeros, its result is discarded anyway.
    filled = torch.where(mask.any(dim=-1, keepdim=True), filled, torch.zeros_like(x))
    return torch.where(mask, torch.log_softmax(filled, dim=-1), torch.zeros_like(x))


def _reduce(per_group: torch.Tensor, contributes: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_group`` over the contributing groups; a zero connected to the graph when there are none."""
    total = torch.where(contributes, per_group, torch.zeros_like(per_group)).sum()
    return total / contributes.sum().clamp(min=1).to(per_group.dtype)


def _target(labels: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(labels / temperature) over the valid columns; exactly 0 at padded columns."""
    return torch.where(mask, _log_softmax(labels / temperature, mask).exp(), torch.zeros_like(labels))


# --------------------------------------------------------------------------------------------------------------
# pointwise


def bce(
    scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *, threshold: float = 1.0
) -> torch.Tensor:
    """Binary cross-entropy on binarised labels, with the scores as logits.

    Formula: ``y_i = 1 if labels_i >= threshold else 0``;
    ``L_b = mean over valid i of [-y_i log sigmoid(s_i) - (1 - y_i) log(1 - sigmoid(s_i))]``.

    Args:
        scores: logits ``[B, N]``.
        labels: graded labels ``[B, N]``; a column is positive when its label is at least ``threshold``.
        mask: bool ``[B, N]``, ``True`` = real column; ``None`` = all real.
        threshold: the grade at which a label counts as relevant (1 for binary judgements; 2 for TREC DL style
            grades where 1 means "related").

    Returns:
        The mean of ``L_b`` over groups with at least one valid column.

    Reference: the pointwise cross-encoder objective (Nogueira and Cho 2019, "Passage Re-ranking with BERT";
    sentence-transformers' ``BinaryCrossEntropyLoss``, which it equals without padding).
    """
    scores, labels, mask = _check("bce", scores, labels, mask)
    threshold = _finite("bce", "threshold", threshold)
    target = (labels >= threshold).to(scores.dtype)
    per_item = F.binary_cross_entropy_with_logits(scores, target, reduction="none")
    count = mask.sum(dim=-1)
    per_group = torch.where(mask, per_item, torch.zeros_like(per_item)).sum(dim=-1) / count.clamp(min=1)
    return _reduce(per_group, count > 0)


def grouped_ce(
    scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *, temperature: float = 1.0
) -> torch.Tensor:
    """Grouped softmax cross-entropy: pick the positive in column 0 out of its group of hard negatives.

    Formula: ``L_b = -log softmax(s_b / temperature)_0 = logsumexp_{valid j}(s_bj / t) - s_b0 / t``.

    Requirements: column 0 is valid in every group and its label is strictly greater than the label of every
    other valid column (exactly one positive, in column 0; the rest are negatives, whatever their grades).

    Args:
        scores: logits ``[B, N]``.
        labels: ``[B, N]``; only used to check the requirement above.
        mask: bool ``[B, N]``, ``True`` = real column; ``None`` = all real.
        temperature: divides the scores before the softmax; must be > 0.

    Returns:
        The mean of ``L_b`` over groups with at least one valid negative.

    Reference: the BGE reranker recipe (Xiao et al. 2023, "C-Pack"; FlagEmbedding's reranker fine-tuning), the
    localised contrastive estimation of Gao et al. 2021, "Rethink Training of BERT Rerankers in Multi-Stage
    Retrieval Pipeline"; sentence-transformers' ``MultipleNegativesRankingLoss.calculate_loss`` with
    ``scale = 1 / temperature`` and no activation.
    """
    scores, labels, mask = _check("grouped_ce", scores, labels, mask)
    temperature = _positive("grouped_ce", "temperature", temperature)
    _need_column0("grouped_ce", mask)
    others = mask.clone()
    others[:, 0] = False
    beaten = others & (labels >= labels[:, :1])
    if beaten.any():
        b, n = (int(i) for i in beaten.nonzero()[0])
        raise ValueError(
            f"grouped_ce: column 0 must be the single positive, with a label strictly above every other valid "
            f"column; group {b} has labels[{b}, 0] = {labels[b, 0].item()} and labels[{b}, {n}] = "
            f"{labels[b, n].item()}"
        )
    per_group = -_log_softmax(scores / temperature, mask)[:, 0]
    return _reduce(per_group, others.any(dim=-1))


def nll(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The positive's own score, maximised: no negatives, no labels.

    Formula: ``L_b = -s_b0``.

    Meant for the query-likelihood method, whose score is the (mean) log-probability of the query's tokens given
    the document: there ``L`` is the language-modelling loss of the query after its positive document's prompt,
    so training with it teaches the model to write the query that its positive answers (query-generation
    fine-tuning, as docT5query and the fine-tuned query-likelihood rankers do; Nogueira et al. 2019, "From doc2query
    to docTTTTTquery"; Zhuang et al. 2021, "Deep Query Likelihood Models for Information Retrieval"). A score that
    is not a log-probability has no maximum, so the trainer refuses this loss for every other method, and it
    takes groups of the positive alone (``group_size = 1``). Columns after 0 take no part in the value or the
    gradient, but are validated like every loss's (finite where the mask says valid).

    Args:
        scores: ``[B, N]``; column 0 is the positive and must be valid in every group.
        labels: ``[B, N]``; their values take no part (only the common checks: shape, finite where valid).
        mask: bool ``[B, N]``; ``None`` = all real.

    Returns:
        The mean of ``L_b`` over the groups (every group contributes).
    """
    scores, labels, mask = _check("nll", scores, labels, mask)
    _need_column0("nll", mask)
    return _reduce(-scores[:, 0], mask[:, 0])


# --------------------------------------------------------------------------------------------------------------
# pairwise


def ranknet(
    scores: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    sigma: float = 1.0,
    weighted: bool = False,
) -> torch.Tensor:
    """RankNet: logistic loss on every ordered pair of valid columns whose labels differ.

    Formula: over the pairs ``P_b = {(i, j): i, j valid, y_i > y_j}``,
    ``L_b = (1 / |P_b|) * sum_{(i, j) in P_b} w_ij * log(1 + exp(-sigma * (s_i - s_j)))``
    with ``w_ij = |y_i - y_j|`` when ``weighted`` else 1 (natural log; the mean is over pairs, not weights).

    Args:
        scores: logits ``[B, N]``.
        labels: graded labels ``[B, N]``; only their order (and with ``weighted``, their differences) matters.
        mask: bool ``[B, N]``, ``True`` = real column; ``None`` = all real.
        sigma: the slope of the logistic; must be > 0.
        weighted: weight each pair by its label difference.

    Returns:
        The mean of ``L_b`` over groups with at least one pair.

    Reference: Burges et al. 2005, "Learning to Rank using Gradient Descent"; allRank's ``rankNet`` (and
    ``rankNet_weightByGTDiff``), which it equals group by group.
    """
    scores, labels, mask = _check("ranknet", scores, labels, mask)
    sigma = _positive("ranknet", "sigma", sigma)
    label_diff = labels[:, :, None] - labels[:, None, :]
    pairs = (mask[:, :, None] & mask[:, None, :]) & (label_diff > 0)
    per_pair = F.softplus(-sigma * (scores[:, :, None] - scores[:, None, :]))
    if weighted:
        per_pair = per_pair * label_diff.abs()
    count = pairs.sum(dim=(1, 2))
    per_group = torch.where(pairs, per_pair, torch.zeros_like(per_pair)).sum(dim=(1, 2)) / count.clamp(min=1)
    return _reduce(per_group, count > 0)


# --------------------------------------------------------------------------------------------------------------
# listwise


def listnet(
    scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *, temperature: float = 1.0
) -> torch.Tensor:
    """ListNet (top-one probability): cross-entropy from the labels' softmax to the scores' softmax.

    Formula: with ``y = softmax(labels / temperature)`` and ``p = softmax(scores)``, both over the valid
    columns, ``L_b = -sum_{valid i} y_i log p_i``.

    Args:
        scores: logits ``[B, N]``.
        labels: graded labels ``[B, N]`` (any real values).
        mask: bool ``[B, N]``, ``True`` = real column; ``None`` = all real.
        temperature: divides the labels (not the scores) before their softmax; must be > 0. Lower sharpens the
            target towards the best-labelled column.

    Returns:
        The mean of ``L_b`` over groups with at least two valid columns.

    Reference: Cao et al. 2007, "Learning to Rank: From Pairwise Approach to Listwise Approach"; allRank's
    ``listNet`` and sentence-transformers' ``ListNetLoss``, which it equals at ``temperature=1``.
    """
    scores, labels, mask = _check("listnet", scores, labels, mask)
    temperature = _positive("listnet", "temperature", temperature)
    target = _target(labels, mask, temperature)
    per_group = -(target * _log_softmax(scores, mask)).sum(dim=-1)
    return _reduce(per_group, mask.sum(dim=-1) >= 2)


def poly1(
    scores: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    epsilon: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Poly-1 softmax cross-entropy: ListNet plus ``epsilon`` times the first polynomial term.

    Formula: with ``y = softmax(labels / temperature)`` and ``p = softmax(scores)`` over the valid columns,
    ``L_b = sum_{valid i} y_i (-log p_i) + epsilon * sum_{valid i} y_i (1 - p_i)``.
    With ``epsilon=0`` this is :func:`listnet`.

    Args:
        scores: logits ``[B, N]``.
        labels: graded labels ``[B, N]`` (any real values).
        mask: bool ``[B, N]``, ``True`` = real column; ``None`` = all real.
        epsilon: the weight of the poly-1 term; at least -1 (below that the loss stops decreasing in ``p``).
        temperature: divides the labels before their softmax; must be > 0.

    Returns:
        The mean of ``L_b`` over groups with at least two valid columns.

    Reference: Leng et al. 2022, "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions"; its use as a listwise ranking loss in Zhuang et al. 2023, "RankT5".
    """
    scores, labels, mask = _check("poly1", scores, labels, mask)
    temperature = _positive("poly1", "temperature", temperature)
    epsilon = _finite("poly1", "epsilon", epsilon)
    if epsilon < -1:
        raise ValueError(f"poly1: epsilon must be at least -1, got {epsilon}")
    target = _target(labels, mask, temperature)
    log_p = _log_softmax(scores, mask)
    p = torch.where(mask, log_p.exp(), torch.zeros_like(log_p))
    per_group = -(target * log_p).sum(dim=-1) + epsilon * (target * (1 - p)).sum(dim=-1)
    return _reduce(per_group, mask.sum(dim=-1) >= 2)


def listmle(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ListMLE: negative Plackett-Luce log-likelihood of the ideal order under the scores.

    Formula: let ``pi`` list the valid columns by label, descending, ties broken by column index (the lower
    index first; deterministic). With ``n`` valid columns,
    ``L_b = sum_{k=1..n} [logsumexp_{m=k..n} s_pi(m) - s_pi(k)]`` (the last term is 0).

    Args:
        scores: logits ``[B, N]``.
        labels: graded labels ``[B, N]``; only their order matters.
        mask: bool ``[B, N]``, ``True`` = real column; ``None`` = all real.

    Returns:
        The mean of ``L_b`` over groups with at least two valid columns (the sum over positions is not
        normalised by ``n``).

    Reference: Xia et al. 2008, "Listwise Approach to Learning to Rank: Theory and Algorithm"; allRank's
    ``listMLE`` and sentence-transformers' ``ListMLELoss``, which it equals when labels have no ties (they break
    ties at random or by an unstable sort).
    """
    scores, labels, mask = _check("listmle", scores, labels, mask)
    order = _order(labels, mask)
    s = scores.gather(1, order)
    valid = mask.gather(1, order)  # the valid columns first, in label order
    n = scores.shape[1]
    later = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu()  # later[k, m] = m >= k
    block = valid[:, None, :] & later[None] & valid[:, :, None]
    filled = torch.where(block, s[:, None, :].expand(-1, n, -1), _NEG_INF)
    filled = torch.where(block.any(dim=-1, keepdim=True), filled, torch.zeros_like(filled))
    lse = torch.logsumexp(filled, dim=-1)
    per_position = torch.where(valid, lse - s, torch.zeros_like(s))
    return _reduce(per_position.sum(dim=-1), mask.sum(dim=-1) >= 2)


def _order(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Column indices by value descending, valid columns first, ties by column index (stable)."""
    keyed = torch.where(mask, values, _NEG_INF)
    # A stable sort on -value keeps equal values in column order; -inf padding would tie with a valid -inf, but
    # valid values are finite, so padding (now +inf after negation) always sorts last.
    return torch.sort(-keyed, dim=-1, stable=True).indices


def lambdaloss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mu: float = 10.0,
    sigma: float = 1.0,
) -> torch.Tensor:
    """LambdaLoss with the NDCG-Loss2++ weighting: a metric-driven weighted RankNet.

    Formula: rank the valid columns by score, descending (ties by column index), so column ``i`` sits at
    position ``r_i`` in ``1..n``; with ``D(r) = log2(1 + r)``, gains ``G_i = (2^{y_i} - 1) / maxDCG`` where
    ``maxDCG = sum_{k=1..n} (2^{y_(k)} - 1) / D(k)`` over the labels sorted descending, and
    ``delta_ij = |1 / D(|r_i - r_j|) - 1 / D(|r_i - r_j| + 1)|``::

        w_ij = |G_i - G_j| * (mu * delta_ij + |1 / D(r_i) - 1 / D(r_j)|)
        L_b  = sum_{i, j valid, y_i > y_j} w_ij * -log2(sigmoid(sigma * (s_i - s_j)))

    The weights follow the current ranking but are constants for the gradient (the sort is not
    differentiated). NDCG is not truncated (``k = None``); ``log2`` follows the paper and allRank.

    Args:
        scores: logits ``[B, N]``.
        labels: graded labels ``[B, N]``, at least 0 at valid columns (the gain is ``2^y - 1``).
        mask: bool ``[B, N]``, ``True`` = real column; ``None`` = all real.
        mu: the weight of the NDCG-Loss2 term against the LambdaRank term; at least 0.
        sigma: the slope of the logistic; must be > 0.

    Returns:
        The mean of ``L_b`` over groups with at least one pair ``y_i > y_j`` (``L_b`` is a sum over pairs, as
        in allRank's ``reduction="sum"`` for one group).

    Reference: Wang et al. 2018, "The LambdaLoss Framework for Ranking Metric Optimization" (NDCG-Loss2++,
    eq. 13); allRank's ``lambdaLoss(weighing_scheme="ndcgLoss2PP_scheme")``, which it equals group by group.
    """
    scores, labels, mask = _check("lambdaloss", scores, labels, mask)
    mu = _finite("lambdaloss", "mu", mu)
    if mu < 0:
        raise ValueError(f"lambdaloss: mu must be at least 0, got {mu}")
    sigma = _positive("lambdaloss", "sigma", sigma)
    negative = mask & (labels < 0)
    if negative.any():
        b, n = (int(i) for i in negative.nonzero()[0])
        raise ValueError(f"lambdaloss: labels must be >= 0 at valid columns, got {labels[b, n].item()} at [{b}, {n}]")

    with torch.no_grad():
        n = scores.shape[1]
        positions = torch.arange(1, n + 1, dtype=scores.dtype, device=scores.device)
        # rank[b, i]: the 1-based position of column i when the valid columns are sorted by score
        rank = torch.empty_like(scores)
        rank.scatter_(1, _order(scores, mask), positions.expand_as(scores).contiguous())
        gain = torch.where(mask, torch.pow(2.0, labels) - 1, torch.zeros_like(labels))
        ideal = gain.gather(1, _order(labels, mask))  # padding has gain 0, so it adds nothing at the end
        max_dcg = (ideal / torch.log2(1 + positions)).sum(dim=-1, keepdim=True)
        g = gain / torch.where(max_dcg > 0, max_dcg, torch.ones_like(max_dcg))
        inv_d = 1 / torch.log2(1 + rank)
        gap = (rank[:, :, None] - rank[:, None, :]).abs()
        # at gap 0 (i == j) 1 / D(0) is infinite; those entries are never pairs, so use gap 1 there
        safe_gap = gap.clamp(min=1)
        delta = (1 / torch.log2(1 + safe_gap) - 1 / torch.log2(2 + safe_gap)).abs()
        lambdarank = (inv_d[:, :, None] - inv_d[:, None, :]).abs()
        weight = (g[:, :, None] - g[:, None, :]).abs() * (mu * delta + lambdarank)
        pairs = mask[:, :, None] & mask[:, None, :] & (labels[:, :, None] > labels[:, None, :])

    per_pair = weight * F.softplus(-sigma * (scores[:, :, None] - scores[:, None, :])) / math.log(2)
    per_group = torch.where(pairs, per_pair, torch.zeros_like(per_pair)).sum(dim=(1, 2))
    return _reduce(per_group, pairs.any(dim=(1, 2)))


# --------------------------------------------------------------------------------------------------------------
# distillation


def kl(
    scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *, temperature: float = 1.0
) -> torch.Tensor:
    """KL divergence from the teacher's score distribution to the student's.

    Formula: with ``q = softmax(labels / temperature)`` (the teacher) and ``p = softmax(scores)`` (the student),
    both over the valid columns, ``L_b = KL(q || p) = sum_{valid i} q_i (log q_i - log p_i)`` (``0 log 0 = 0``).
    Its gradient equals ListNet's; the value differs by the teacher's entropy, so a perfect student scores 0.

    Args:
        scores: the student's logits ``[B, N]``.
        labels: the teacher's scores ``[B, N]`` (any real values; e.g. minus the teacher's rank).
        mask: bool ``[B, N]``, ``True`` = real column; ``None`` = all real.
        temperature: divides the teacher's scores (not the student's) before the softmax; must be > 0.

    Returns:
        The mean of ``L_b`` over groups with at least two valid columns (``torch.nn.functional.kl_div`` with
        ``reduction="batchmean"`` when nothing is padded).

    Reference: Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"; for rerankers, e.g.
    Pradeep et al. 2023 "RankVicuna" / Schlatt et al. 2024 "A Systematic Investigation of Distilling Large
    Language Models into Cross-Encoders for Passage Re-ranking".
    """
    scores, labels, mask = _check("kl", scores, labels, mask)
    temperature = _positive("kl", "temperature", temperature)
    log_q = _log_softmax(labels / temperature, mask)
    q = torch.where(mask, log_q.exp(), torch.zeros_like(log_q))
    terms = q * (log_q - _log_softmax(scores, mask))
    per_group = torch.where(q > 0, terms, torch.zeros_like(terms)).sum(dim=-1)
    return _reduce(per_group, mask.sum(dim=-1) >= 2)


def margin_mse(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MarginMSE: match the student's margins to the teacher's, column 0 against every other valid column.

    Formula: ``L_b = mean_{valid j >= 1} [(s_b0 - s_bj) - (t_b0 - t_bj)]^2``.

    Requirements: column 0 is valid in every group (the teacher need not rank it first).

    Args:
        scores: the student's scores ``[B, N]``.
        labels: the teacher's scores ``t`` ``[B, N]``, on the scale the student should reproduce.
        mask: bool ``[B, N]``, ``True`` = real column; ``None`` = all real.

    Returns:
        The mean of ``L_b`` over groups with at least one valid column besides column 0 (equal to the mean over
        all ``B * (N - 1)`` margins when nothing is padded).

    Reference: Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
    Knowledge Distillation"; sentence-transformers' ``MarginMSELoss``.
    """
    scores, labels, mask = _check("margin_mse", scores, labels, mask)
    _need_column0("margin_mse", mask)
    others = mask.clone()
    others[:, 0] = False
    error = (scores[:, :1] - scores) - (labels[:, :1] - labels)
    count = others.sum(dim=-1)
    per_group = torch.where(others, error.square(), torch.zeros_like(error)).sum(dim=-1) / count.clamp(min=1)
    return _reduce(per_group, count > 0)


LossFn = Callable[..., torch.Tensor]

LOSSES: dict[str, LossFn] = {
    "bce": bce,
    "grouped_ce": grouped_ce,
    "nll": nll,
    "ranknet": ranknet,
    "listnet": listnet,
    "poly1": poly1,
    "listmle": listmle,
    "lambdaloss": lambdaloss,
    "kl": kl,
    "margin_mse": margin_mse,
}
"""Every loss by the name the trainer and the config use."""
