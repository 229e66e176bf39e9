"""hermes: one segmentation network for many tasks and modalities, steered by task and modality priors (issue #21).

    tasks.py    the task table (name → index, modality, source, label) and request validation
    network.py  HermesR (ResUNet + prior fusion + dynamic per-task head) and the MultiHeadUNet baseline
    losses.py   partial-label Dice + BCE over supervised tasks, modality CE
    data.py     source volumes on the common 3 mm grid, patch samplers, collate, the held-out splits
    sizes.py    parameter counts, CPU timings, ONNX parity (`python -m services.hermes.sizes`)
    train.py    resumable training of Hermes-R, the multi-head baseline and the per-dataset single models
                (`python -m services.hermes.train {hermes,multihead,single}`)
    inference.py  whole-volume sliding-window inference for a task list, results on the input grid
    task_transfer.py  the new-task check: learn one task token (all else frozen) vs a few-volume single model

See docs/hermes.md.
"""
