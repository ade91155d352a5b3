"""Training: groups of candidates (:mod:`.groups`), ranking losses (:mod:`.losses`), the fine-tuning loop.

Import the module you need (``from llmrerank.train.losses import LOSSES``); this package imports nothing
itself, so building groups does not pull in the training stack.
"""
