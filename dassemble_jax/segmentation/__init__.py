"""3D segmentation: partial-label loss, sliding-window prediction, post-processing, metrics, I/O."""
