"""medgen: reproduction, benchmarking and demonstration suite for diffusion-based medical image translation."""
__version__ = "0.1.0"
