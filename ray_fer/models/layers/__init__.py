"""Building blocks shared by several models (stem adaptation, pretrained weights, attention)."""
