"""Ranking methods. Each is its own module; :mod:`llmrerank.registry` maps names to them."""

from .base import Ranker
from .likelihood import LikelihoodRanker
from .listwise import ListwiseRanker
from .pairwise import PairwiseRanker
from .pointwise import PointwiseRanker
from .setwise import SetwiseRanker

__all__ = ["LikelihoodRanker", "ListwiseRanker", "PairwiseRanker", "PointwiseRanker", "Ranker", "SetwiseRanker"]
