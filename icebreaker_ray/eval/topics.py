"""A topic classifier for semantic diversity and the topic-distribution figure.

    clf = TopicClassifier.fit(load_catalog(), encoder)
    clf.predict(["Which One Piece arc hooked you first?"])   # -> ['anime & ACGN']

Logistic regression over sentence embeddings, trained on the catalog's own phrasing
(rendered starters and session summaries of every subject, labelled with the subject's
category). The catalog is the world's public vocabulary, not its hidden state: the
classifier knows what "anime" sounds like, not what any user likes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from icebreaker_ray.sim.catalog import Catalog, all_starters, all_summaries


@dataclass
class TopicClassifier:
    model: object
    names: dict[str, str]  # category id -> display name
    encoder: object
    train_accuracy: float

    @classmethod
    def fit(cls, catalog: Catalog, encoder, per_subject: int = 6, seed: int = 0) -> TopicClassifier:
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(seed)
        texts, labels = [], []
        for subject in catalog.subjects:
            for pool in (all_starters(subject), all_summaries(subject)):
                take = min(per_subject, len(pool))
                texts += [pool[i] for i in rng.choice(len(pool), take, replace=False)]
                labels += [subject.category_id] * take
        x = encoder(texts)
        model = LogisticRegression(max_iter=2000, C=4.0).fit(x, labels)
        names = {c.id: c.name for c in catalog.categories}
        return cls(model, names, encoder, float(model.score(x, labels)))

    def predict(self, texts: Sequence[str]) -> list[str]:
        """Category display name of each text."""
        if not texts:
            return []
        return [self.names[c] for c in self.model.predict(self.encoder(list(texts)))]

    def categories_per_list(self, lists: Sequence[Sequence[str]]) -> list[list[str]]:
        flat = self.predict([s for starters in lists for s in starters])
        out, pos = [], 0
        for starters in lists:
            out.append(flat[pos: pos + len(starters)])
            pos += len(starters)
        return out
