"""Command line (`cinescene ...`) and launchers. Installed as ``cinescene.launch``."""
