"""Hostile inputs to the config layer and the commands that start or submit runs (issue 20: 3, 5, 7, 11).

One test per class of mistake: each is one line on the console (exit 2 for a config or usage mistake, 1 for
a runtime one), decided before anything is written, started or submitted.
"""

from __future__ import annotations

import time

import pytest

from cinescene.config import ConfigError, load_config
from cinescene.config.loading import MAX_YAML_VALUES
from cinescene.config.sweep import MAX_TRIALS, expand_sweep
from cinescene.distributed import startup_signals
from cinescene.launch.cli import main

SMOKE = "configs/experiments/smoke.yaml"


@pytest.fixture(autouse=True)
def default_preemption_signals():
    """``main(["train", ...])`` records the preemption signals from its start, as the real command does, and
    a process that ran it would exit; here the next tests get Python's default handlers back."""
    yield
    startup_signals.configure([])


def one_line(capsys, code: int, status: int = 2) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cinescene ")]
    assert code == status and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


# ------------------------------------------------------------------ item 7: YAML aliases cannot explode
def _alias_bomb(levels: int = 8) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _merge_bomb(levels: int = 7) -> str:
    lines = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9, j: 10}"]
    for i in range(1, levels + 1):
        lines.append(f"m{i}: &m{i} {{" + ", ".join(f"k{j}: {{<<: *m{i - 1}}}" for j in range(10)) + "}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("bomb", [_alias_bomb, _merge_bomb], ids=["aliases", "merge keys"])
def test_an_alias_bomb_is_refused_at_once_in_configs_and_sweep_files(tmp_path, repo_root, bomb):
    config = tmp_path / "bomb.yaml"
    config.write_text(bomb())
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(bomb() + f"sweep:\n  name: s\n  base: {repo_root / SMOKE}\n")
    for read in (lambda: load_config(config), lambda: expand_sweep(sweep)):
        started = time.perf_counter()
        with pytest.raises(
            ConfigError, match=f"more than {MAX_YAML_VALUES} values once its aliases are expanded"
        ):
            read()
        assert time.perf_counter() - started < 5  # was: ~10 s per 300 bytes, x10 per 59 more


def test_a_checkpoint_config_is_read_by_the_same_capped_reader(tmp_path):
    from cinescene.ckpt import CheckpointSource, checkpoint_config
    from cinescene.ckpt.locate import STEP

    step = tmp_path / "step_00000001"
    step.mkdir()
    (step / "config.yaml").write_text(_alias_bomb())
    with pytest.raises(Exception, match="once its aliases are expanded"):
        checkpoint_config(CheckpointSource(step, STEP, 1))


# ------------------------------------------------------------------ list[X] keys hold X
@pytest.mark.parametrize(
    "override, key",
    [
        ("tracking.wandb.tags=[[a],[b]]", "tracking.wandb.tags[0]"),
        ("tracking.wandb.tags=[{a: 1}]", "tracking.wandb.tags[0]"),
        ("launch.slurm.extra=[[--constraint=x]]", "launch.slurm.extra[0]"),
        ("model.trainable=[x, [y]]", "model.trainable[1]"),
        ("model.patch_size=[1, true, 2]", "model.patch_size[1]"),
    ],
)
def test_list_keys_refuse_nested_lists_and_mappings(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(SMOKE, [override])
    assert info.value.key == key and "expected" in info.value.message


# ------------------------------------------------------------------ writing where nothing should
@pytest.mark.parametrize(
    "override, shown",
    [
        ("checkpoint.dir=../../../../../../../../etc", "inside the system directory /etc"),
        ("run.dir=/", "the file system root"),
        ("run.dir=/dev/null", "inside the system directory /dev"),
        ("run.dir=..", "a directory above the working directory"),
    ],
)
def test_a_run_may_not_write_into_system_places(capsys, override, shown):
    line = one_line(capsys, main(["train", SMOKE, "--dry-run", override]))
    assert f"config error: {override.partition('=')[0]}: " in line and shown in line


@pytest.mark.parametrize(
    "extra, option",
    [
        ("--output=/etc/cron.d/x", "output"),
        ("--out=/etc/x", "output"),  # sbatch takes unique prefixes of its options
        ("--wrap=rm -rf ~", "wrap"),
        ("--nodes=99", "nodes"),
        ("--chdir=/", "chdir"),
        ("--export=NONE", "export"),
        ("--wait", "wait"),
        ("--ntasks-per-n=2", "ntasks-per-node"),
        ("--no-req", "no-requeue"),
        ("--gpus=4", "gpus"),
    ],
)
def test_slurm_extra_refuses_options_cinescene_decides(capsys, extra, option):
    line = one_line(capsys, main(["submit", SMOKE, "--dry-run", f"launch.slurm.extra=[{extra!r}]"]))
    assert "launch.slurm.extra[0]:" in line and f"sets sbatch's --{option}" in line


def test_slurm_extra_keeps_other_options(capsys):
    extra = "launch.slurm.extra=[--constraint=h100, --exclusive, --nodelist=vm, --nodefile=hosts]"
    assert main(["submit", SMOKE, "--dry-run", extra]) == 0
    assert "--constraint=h100 --exclusive --nodelist=vm --nodefile=hosts" in capsys.readouterr().out


# ------------------------------------------------------------------ checked before anything starts
@pytest.mark.slow
def test_a_patch_that_does_not_tile_the_latents_fails_before_any_rank(tmp_path, capsys, smoke_shards):
    run_dir = tmp_path / "run"
    args = [SMOKE, f"run.dir={run_dir}", f"data.train_shards={smoke_shards}", "model.patch_size=[1,3,3]"]
    line = one_line(capsys, main(["train", *args, "--dry-run"]))
    assert "model.patch_size: [1, 3, 3] does not tile the data's latent grid: 5 frames x 16x16" in line
    line = one_line(capsys, main(["train", *args, "--nproc", "1", "tracking.wandb.mode=offline"]))
    assert "does not tile" in line and not run_dir.exists()  # no rank, no W&B run, no file


def test_local_ranks_must_fit_the_machine_in_a_dry_run_too(capsys):
    line = one_line(capsys, main(["train", SMOKE, "--dry-run", "--nproc", "100000"]))
    assert "--nproc: expected at most" in line and "local ranks, got 100000" in line


# ------------------------------------------------------------------ the wrong kind is not "not found"
@pytest.mark.parametrize(
    "path, said",
    [
        ("configs", "is a directory, not a file"),
        ("/dev/null", "is a device or special file"),
        ("x" * 300, "too long"),
    ],
)
def test_a_config_path_of_the_wrong_kind_says_so(capsys, path, said):
    line = one_line(capsys, main(["train", path, "--dry-run"]))
    assert said in line and "not found" not in line


# ------------------------------------------------------------------ item 5: what is printed is masked
SECRET = "hf_abcdefghijklmnop0123456789"


@pytest.mark.parametrize("flag", ["--print-config", "--dry-run"])
def test_submit_masks_secrets_like_train(capsys, monkeypatch, flag):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert main(["submit", SMOKE, flag, f"tracking.wandb.notes=token {SECRET}"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "***" in out


def test_sweep_tables_mask_secrets(tmp_path, capsys, monkeypatch, repo_root):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"sweep:\n  name: s\n  base: {repo_root / SMOKE}\n  run_root: {tmp_path / 'runs'}\n"
        f"  trials: [[tracking.wandb.notes={SECRET}]]\n"
    )
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    assert main(["sweep", "status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "***" in out


# ------------------------------------------------------------------ hangs: trials are counted first
def _sweep(tmp_path, repo_root, body: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"sweep:\n  name: s\n  base: {repo_root / SMOKE}\n  run_root: {tmp_path / 'runs'}\n{body}"
    )
    return path


@pytest.mark.parametrize(
    "body, key, said",
    [
        (
            "  grid:\n"
            + "".join(
                f"    {key}: [{', '.join(map(str, range(1, 11)))}]\n"
                for key in (
                    "train.max_steps",
                    "train.warmup_steps",
                    "train.micro_batch_size",
                    "train.grad_accum",
                    "run.seed",
                    "data.num_workers",
                )
            ),
            "sweep.grid",
            f"expected a value <= {MAX_TRIALS}",
        ),
        ("  sample: 1000000000\n  space:\n    train.lr: {choice: [0.1]}\n", "sweep.sample", "(only 1)"),
        (
            "  sample: 5\n  space:\n    train.warmup_steps: {int_uniform: [0, 2]}\n",
            "sweep.sample",
            "(only 3)",
        ),
    ],
)
def test_a_sweep_too_large_is_refused_before_it_expands(tmp_path, repo_root, body, key, said):
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        expand_sweep(_sweep(tmp_path, repo_root, body))
    assert info.value.key == key and said in str(info.value)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("root", ["/", "../../../../../../../..", "/etc/cinescene"])
def test_a_sweep_run_root_in_a_system_place_is_refused(tmp_path, repo_root, root):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"sweep:\n  name: s\n  base: {repo_root / SMOKE}\n  run_root: {root}\n")
    with pytest.raises(ConfigError) as info:
        expand_sweep(path)
    assert info.value.key == "sweep.run_root"


def test_run_dirs_that_differ_only_in_spelling_are_one_directory(tmp_path, repo_root):
    body = (
        f"  trials:\n    - [run.dir={tmp_path}/x, train.lr=0.1]\n"
        f"    - [run.dir={tmp_path}/./x/, train.lr=0.2]\n"
    )
    with pytest.raises(ConfigError, match="trials 0 and 1 would share the run directory") as info:
        expand_sweep(_sweep(tmp_path, repo_root, body))
    assert info.value.key == "run.dir"


# ------------------------------------------------------------------ item 3: a trial is its whole config
@pytest.mark.slow
def test_a_trials_identity_is_its_whole_resolved_config(tmp_path, repo_root):
    base_a = tmp_path / "a.yaml"
    base_a.write_text(f"defaults: [{repo_root / SMOKE}]\ntrain:\n  lr: 1.0e-3\n")
    base_b = tmp_path / "b.yaml"
    base_b.write_text(f"defaults: [{repo_root / SMOKE}]\ntrain:\n  lr: 2.0e-3\n")
    spec = "sweep:\n  name: same\n  base: {base}\n  run_root: {root}\n  grid: {{train.max_steps: [3, 4]}}\n"

    def signatures(base, root=tmp_path / "runs"):
        path = tmp_path / "sweep.yaml"
        path.write_text(spec.format(base=base, root=root))
        return [t.signature for t in expand_sweep(path)[1]]

    first = signatures(base_a)
    assert signatures(base_a) == first  # an unchanged trial finds its own directory again
    other_base = signatures(base_b)  # same sweep name and grid, another base: other trials
    assert not set(other_base) & set(first)
    base_a.write_text(f"defaults: [{repo_root / SMOKE}]\ntrain:\n  lr: 1.0e-3\n  warmup_steps: 7\n")
    assert not set(signatures(base_a)) & set(first)  # an edited base: other trials
    base_a.write_text(f"defaults: [{repo_root / SMOKE}]\ntrain:\n  lr: 0.001\n")
    assert signatures(base_a) == first  # the same values spelt otherwise: the same trials


# ------------------------------------------------------------------ "internal error" for damaged records
@pytest.mark.parametrize(
    "name, content",
    [
        ("slurm/trial.json", b"\xff\xfe{"),
        ("slurm/trial.json", b'{"varied": [1, {"a": 2}], "max_steps": "x", "signature": 5}'),
        ("slurm/jobs", b"\xff\x00\n12; rm -rf /\n"),
        ("metrics.jsonl", b"\xff\xfe\n"),
        ("metrics.jsonl", b'{"step": "x", "loss": "y", "restarts": []}\n'),
    ],
)
def test_sweep_status_reads_damaged_trial_records_as_absent(tmp_path, capsys, name, content):
    trial = tmp_path / "root" / "abc"
    (trial / "slurm").mkdir(parents=True)
    (trial / "slurm" / "trial.json").write_text(
        '{"signature": "abc", "varied": ["train.lr=0.1"], "max_steps": 3}'
    )
    (trial / name).write_bytes(content)
    assert main(["sweep", "status", str(tmp_path / "root"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "error" not in captured.err and '"job": null' in captured.out
