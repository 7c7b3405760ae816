"""The click-free utility proxy: a stand-in for R_util (eq. 7) before there are clicks.

    interest_similarity(starter_emb, interest_emb)    # (N,) in [0, 1]
    # -> array([0.62, 0.08, 0.0, ...]): each starter's best cosine to one of the user's I*

A run on your own logs without impressions has no clicks to train the utility ranker on
(``train-ranker`` records that it did not run). Until the server has logged some, the one
list search (Algorithm 1, :mod:`icebreaker_ray.search.list_search`) and the server rank by
how close a starter is to the user's trigger interests I*: the best cosine similarity
(sentence embeddings, unit-normalized) to any interest, clipped at 0 so it lives on R_util's
[0, 1] scale and SELECTNEGATIVES' relative utility gaps keep their meaning. It knows
nothing about what users click; it only keeps lists on the user's own topics, which is
what SIT taught the generator too. Mining's manifest labels the pairs it made this way
(``utility: interest-similarity proxy``).
"""

from __future__ import annotations

import numpy as np


def interest_similarity(starter_emb: np.ndarray, interest_emb: np.ndarray) -> np.ndarray:
    """Best cosine of each starter (rows of ``starter_emb``) to an interest (rows of
    ``interest_emb``), clipped to [0, 1]; zeros when the user has no interests.

    >>> interest_similarity(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), np.array([[1.0, 0.0]]))
    array([1., 0., 0.])
    """
    starter_emb = np.asarray(starter_emb, np.float64)
    interest_emb = np.asarray(interest_emb, np.float64)
    if len(starter_emb) == 0 or interest_emb.size == 0:
        return np.zeros(len(starter_emb))
    return np.clip((starter_emb @ interest_emb.T).max(axis=1), 0.0, 1.0)
