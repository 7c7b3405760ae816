"""icebreaker-ray: ICEBREAKER (personalized conversation starters) as a Ray application.

Layout, in the paper's order: ``sim`` (the simulated world: test bed and default data),
``rid`` (resonance-aware interest distillation, §2.2), ``isg`` (starter generation:
prompts, filters, teacher, SFT, DPO, §2.3), ``reward`` (utility ranker and diversity,
eq. 7), ``search`` (hybrid reward list search, Algorithm 1), ``eval`` (§3 metrics, A/B,
report), ``serve`` (Ray Serve application). ``pipeline`` runs the stages in order.
"""

__version__ = "0.1.0"
