"""Few-shot localization (MedLAM) and box-prompted segmentation (MedLSAM); see docs/localization.md."""
