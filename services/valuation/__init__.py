"""Data valuation: which training images are worth labelling and training on.

Re-implementation of "data valuation via synaptic intelligence and gradient norms" (arXiv
2306.14113; ../shared/METHODS.md §3): per-sample Data SI and gradient-norm values from
`torch.func` per-sample gradients, online selection each epoch, an offline coreset, and the
comparison against full data and a random subset. Workers run it as a batch job
(`workers.valuation_tasks.score_dataset`); `medstack valuation run` runs it locally.

Modules: `networks` (small CNN, ResNet-18 with a width option), `values` (per-sample gradients,
Data SI, gradient norm, grouping), `selection` (KMeans drop, thresholds, coreset), `data`
(organ patches from the real CT, digits, .npz / image-zip inputs), `train` (checkpointed runs),
`job` (params, the whole valuation, outputs). docs/valuation.md has the user's view.
"""
