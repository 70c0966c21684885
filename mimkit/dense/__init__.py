"""Dense prediction on mimkit encoders: Mask R-CNN detection (COCO) and UperNet semantic segmentation (ADE20K),
the downstream half of the source papers (ConvMAE Sec. 3.2-3.3, MixMAE Sec. 4, LocalMIM, MR-MAE)."""
