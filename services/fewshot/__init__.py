"""Few-shot adaptation of MedStack's own foundation encoders (MedFMC protocol, ConES concept embeddings).

Contract between the learning side (encoders, methods, protocol, evaluation) and the serving side (gateway
routes, adaptation job, Triton encoders): ``encoders.ENCODERS`` names what can be adapted, ``adapt.adapt``
turns labelled support images into a ``heads.Head``, and ``heads.apply`` scores encoder outputs with it in
numpy, so the gateway, the worker and the evaluation score the same way. See docs/fewshot.md.
"""
