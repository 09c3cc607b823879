"""Flax NNX models: 2D classifiers, 3D backbones, the universal head, the text encoder."""
