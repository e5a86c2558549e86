"""Tests of real-data I/O, manifests, datasets and augmentation (medgen/data)."""
