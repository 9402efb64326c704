"""One module per subcommand; each has ``add_parser(subparsers)`` and keeps heavy imports inside ``run``."""

COMMANDS = [
    "train",
    "submit",
    "sweep",
    "slurm_job",
    "data",
    "ckpt",
    "model",
    "plan",
    "sample",
    "eval",
    "bench",
    "env",
]
