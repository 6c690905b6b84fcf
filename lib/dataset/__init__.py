"""Datasets, transforms, target generators and the keypoint specs (``specs``)."""
