"""Tests of the phantom simulators (medgen/data/phantoms)."""
