"""umcam: weakly supervised brain extraction on T1 MR from slice-level labels (UM-CAM + GSE, issue #20).

    grid.py           the axial 128×128 slice grid (to_model_slices / from_model_slices)
    networks.py       CamClassifier (three CAM heads) and the 2-D UNet
    pseudo_labels.py  UM-CAM fusion (fuse_cams) and geodesic seed expansion (expand_seeds)
    checkpoint.py     checkpoint folders under checkpoints/
    export_specs.py   umcam_cam and umcam_unet for `medstack export`

See docs/umcam.md (the model card).
"""
