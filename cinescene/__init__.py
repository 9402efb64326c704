"""CineScene: camera-controlled cinematic video generation with static scene context.

The library. Command line in ``cinescene.launch`` (the repository's ``launch/``
folder) and Triton kernels in ``cinescene.kernels`` (``kernels/``).
"""

__version__ = "0.1.0"
