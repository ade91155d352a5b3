"""Ranking methods. Each is its own module; :mod:`llmrerank.registry` maps names to them."""

from .base import Ranker
from .likelihood import LikelihoodRanker
from .listwise import ListwiseRanker
from .pointwise import PointwiseRanker

__all__ = ["LikelihoodRanker", "ListwiseRanker", "PointwiseRanker", "Ranker"]
