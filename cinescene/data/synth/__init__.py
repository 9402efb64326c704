"""Procedural scene-decoupled clips: ray-cast scenes, a moving subject, camera paths (`data synth`)."""

from .generate import render_synthetic_clip, synthesize

__all__ = ["render_synthetic_clip", "synthesize"]
