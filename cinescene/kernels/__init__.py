"""Triton kernels; the code lives in the repository's kernels/ folder."""
