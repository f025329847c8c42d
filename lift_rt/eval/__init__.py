"""Evaluation: feature fidelity against the backbone at 2x, and keypoint PCK."""
