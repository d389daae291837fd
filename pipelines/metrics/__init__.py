"""Evaluation metrics (DESIGN §6): Fréchet distances, learned extractors, weight-free proxies.

- `frechet`: the Fréchet distance with the eigenvalue form of the trace term (FID, FVD, E-FID).
- `extractors`: TorchScript / SyncNet loaders with declared input/output contracts and file hashes.
- `proxies`: ``*_proxy`` metrics that need no weights (E-FID, sync, IQA).

The driver that runs them over two sets of videos is `pipelines.evaluate`.
"""
