"""Command line; the code lives in the repository's launch/ folder."""
