"""hermes: one segmentation network for many tasks and modalities, steered by task and modality priors (issue #21).

    tasks.py    the task table (name → index, modality, source, label) and request validation
    network.py  HermesR (ResUNet + prior fusion + dynamic per-task head) and the MultiHeadUNet baseline
    losses.py   partial-label Dice + BCE over supervised tasks, modality CE
    data.py     source volumes on the common 3 mm grid, patch samplers, collate, the held-out splits
    sizes.py    parameter counts, CPU timings, ONNX parity (`python -m services.hermes.sizes`)

See docs/hermes.md (step 1 status).
"""
