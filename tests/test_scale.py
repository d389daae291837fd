"""What only shows at multi-GPU or cluster scale (issue 21), checked on the CPU: several processes through
`accelerate launch` (gloo) where ranks matter, fakes of the other processes where the order of their
steps does.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import launch_two_processes
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines import checkpoint as ckpt
from pipelines import devices, rendezvous, training
from pipelines.data import WindowDataset
from pipelines.distill import DistillConfig, DistillStage
from pipelines.latent_cache import LatentCache
from pipelines.model_config import get_preset
from pipelines.rendezvous import check_rendezvous
from pipelines.train_teacher import TeacherStage, TeacherTrainConfig
from pipelines.training import (
    Run,
    TrainConfig,
    attach_latent_cache,
    make_accelerator,
    prepare_out,
    update_ema,
)

runner = CliRunner()
TINY = ["--preset", "tiny", "--batch-size", "1", "--device", "cpu", "--seed", "3", "--quiet"]
SCHEDULE = ["--steps", "4", "--lr", "1e-3", "--warmup-steps", "2", "--lr-schedule", "cosine"]


def log_rows(out: Path) -> list[dict]:
    with (out / "train_log.csv").open() as handle:
        return list(csv.DictReader(handle))


# --- 1 and 2: the LR schedule and --overwrite under two processes ------------------------------------


@pytest.mark.slow
def test_two_processes_log_the_learning_rate_of_one_and_overwrite_safely(manifest, tmp_path):
    """With 2 processes accelerate stepped a prepared LR schedule twice per optimiser step: the warm-up
    ended at step 1 and the cosine reached its floor at step 2 of 4. Both processes also deleted the
    --overwrite folder; now the main one does, between barriers."""
    one = tmp_path / "one"
    result = runner.invoke(app, ["train-teacher", "--manifest", str(manifest), "--out", str(one), *TINY, *SCHEDULE])
    assert result.exit_code == 0, result.output
    two = tmp_path / "two"
    shutil.copytree(one, two)  # a checkpoint for --overwrite to replace
    done = launch_two_processes("train-teacher", "--manifest", str(manifest), "--out", str(two), *TINY, *SCHEDULE,
                                "--overwrite", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert ckpt.load_checkpoint_info(two, expect_stage="teacher").step == 4
    lr_one, lr_two = ([float(r["lr"]) for r in log_rows(out)] for out in (one, two))
    assert lr_one[:2] == [5e-4, 1e-3]  # linear warm-up over 2 steps, then the cosine from 1e-3
    assert lr_two == lr_one


class Barriers:
    """A fake accelerator of one process: records whether ``out`` exists at each barrier."""

    def __init__(self, out: Path, main: bool):
        self.out, self.is_main_process, self.seen = out, main, []

    def wait_for_everyone(self):
        self.seen.append(self.out.exists())


def test_overwrite_is_cleared_by_the_main_process_alone(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / ckpt.CHECKPOINT_FILE).write_text("{}")
    other = Barriers(out, main=False)
    prepare_out(out, resume=False, overwrite=True, accelerator=other)
    assert out.is_dir() and other.seen == [True, True]  # another process never deletes it
    main = Barriers(out, main=True)
    prepare_out(out, resume=False, overwrite=True, accelerator=main)
    assert not out.exists() and main.seen == [True, False]  # every process looked before it went
    fresh = Barriers(out, main=True)
    prepare_out(out, resume=False, overwrite=True, accelerator=fresh)
    assert fresh.seen == []  # nothing to clear: no barrier


# --- 4: the step's values are read on the host only on --log-every steps ----------------------------------


def test_step_means_are_reduced_and_read_only_on_log_steps(manifest, tmp_path, monkeypatch):
    """The loop reduced every summary value and read it back (a device sync) at every step; now one all-reduce
    and one copy back, only on the steps it logs (and the last)."""
    reduced = []
    original = training.step_means

    def counted(accelerator, records, names):
        reduced.append(len(records))
        return original(accelerator, records, names)

    monkeypatch.setattr(training, "step_means", counted)
    out = tmp_path / "run"
    args = ["train-teacher", "--manifest", str(manifest), "--out", str(out), *TINY, "--steps", "5", "--log-every", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(reduced) == 3  # steps 2, 4 and the last, 5
    assert [int(row["step"]) for row in log_rows(out)] == [2, 4, 5]


# --- 5: scale details --------------------------------------------------------------------------------


def test_process_group_timeouts_ddp_buckets_and_unused_parameters():
    assert TrainConfig().collective_timeout >= 30  # minutes: a latent-cache fill or a 40 GB save precede barriers
    accelerator = make_accelerator(torch.device("cpu"), TrainConfig(collective_timeout=45), False)
    assert accelerator.init_handler.timeout == timedelta(minutes=45)
    assert accelerator.ddp_handler.gradient_as_bucket_view and not accelerator.ddp_handler.find_unused_parameters
    # DDP looks for unused parameters only where a micro-batch can skip the trained reference net
    teacher = TeacherStage()
    assert teacher.may_skip_parameters(TeacherTrainConfig())  # joint: every sample may drop the reference
    assert teacher.may_skip_parameters(TeacherTrainConfig(stage="image"))
    assert not teacher.may_skip_parameters(TeacherTrainConfig(stage="video"))  # reference net frozen
    assert teacher.may_skip_parameters(TeacherTrainConfig(stage="video", video_trainable="all"))
    assert not teacher.may_skip_parameters(TeacherTrainConfig(p_drop_both=0.0))
    distill = DistillStage()
    assert not distill.may_skip_parameters(DistillConfig(mode="fast"))  # fast mode drops no condition
    assert distill.may_skip_parameters(DistillConfig(mode="balanced"))


def test_ema_update_is_the_lerp_of_every_parameter():
    torch.manual_seed(0)
    params = {"a": torch.nn.Parameter(torch.randn(3, 4)), "b": torch.nn.Parameter(torch.randn(5))}
    ema = {n: torch.randn_like(p) for n, p in params.items()}
    expected = {n: 0.9 * ema[n] + 0.1 * p.detach() for n, p in params.items()}
    update_ema(ema, params, 0.9)
    for name in params:
        torch.testing.assert_close(ema[name], expected[name])


def test_cuda_is_the_local_ranks_gpu_under_a_launcher(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert devices.resolve_device("cuda") == devices.resolve_device("auto") == torch.device("cuda", 2)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index is kept
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the launcher shows each process its own GPU
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)


def test_generation_defaults_to_bf16_on_a_gpu(monkeypatch):
    assert devices.resolve_dtype("auto", torch.device("cpu")) is torch.float32
    monkeypatch.setattr(devices, "bf16_supported", lambda device: True)
    assert devices.resolve_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    result = runner.invoke(app, ["generate", "--help"])
    assert "[default: auto]" in result.output.replace("\n", " ").replace("  ", " ")


def test_resume_restores_the_rng_whatever_the_gpus_visible(monkeypatch):
    """A checkpoint saved with one CUDA RNG state per visible GPU (2) resumes where 1 is visible."""
    state = ckpt.rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored.append)
    ckpt.set_rng_state(state)
    assert len(restored) == 1 and torch.equal(restored[0], state["cuda"][0])
    ckpt.set_rng_state(state | {"cuda": [torch.ones(16, dtype=torch.uint8)]})  # the format saving one GPU's
    assert torch.equal(restored[1], torch.ones(16, dtype=torch.uint8))


class ThreadProcess:
    """A fake accelerator of process ``rank`` of 2, its barriers a `threading.Barrier` shared with the other."""

    def __init__(self, rank: int, barrier: threading.Barrier):
        self.process_index, self.num_processes, self.barrier = rank, 2, barrier
        self.is_main_process = rank == 0

    def wait_for_everyone(self):
        self.barrier.wait()


def test_every_process_fills_its_share_of_the_latent_cache(manifest, tmp_path, monkeypatch):
    """Process 1 lists the missing clips late, after process 0 could have written its share: the shares
    must still cover every clip (they did not when each process listed the missing clips as it began)."""
    written = threading.Event()
    missing = LatentCache.missing

    def late_missing(self, clip_ids):
        if threading.current_thread().name == "rank1":
            written.wait(timeout=3)  # process 0 writes first, unless a barrier holds it until this list is made
        return missing(self, clip_ids)

    monkeypatch.setattr(LatentCache, "missing", late_missing)
    config = get_preset("tiny")
    barrier = threading.Barrier(2, timeout=60)
    resolved = SimpleNamespace(config=TrainConfig(latent_cache=str(tmp_path / "cache")))
    runs = [Run(tmp_path / "out", manifest, resolved, torch.device("cpu"), True, accelerator=ThreadProcess(r, barrier),
                dataset=WindowDataset(manifest, config)) for r in (0, 1)]  # fmt: skip
    encoder = SimpleNamespace(vae=None, encode_images=lambda images: images)
    errors = []

    def process(run):
        try:
            attach_latent_cache(run, encoder)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            if run.rank == 0:
                written.set()

    threads = [threading.Thread(target=process, args=(run,), name=f"rank{run.rank}") for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert missing(runs[0].dataset.cache, runs[0].dataset.clip_ids) == []  # every clip is cached


# --- 7: an address that answers nothing fails fast, leaving nothing behind ------------------------------


def test_a_rendezvous_that_answers_nothing_fails_in_seconds(manifest, tmp_path, monkeypatch):
    """Process 1 of 2 whose launcher names a rendezvous where nothing listens (torch's store would wait the
    whole collective timeout, gloo's 30 min by default). In a daemon thread: a hang fails the test."""
    out = tmp_path / "run"
    launcher = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "1"}  # fmt: skip
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    args = ["train-teacher", "--manifest", str(manifest), "--out", str(out), *TINY, "--steps", "1",
            "--connect-timeout", "2"]  # fmt: skip
    results = []
    thread = threading.Thread(target=lambda: results.append(runner.invoke(app, args)), daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert results, "still waiting for the rendezvous after 120 s"
    lines = [line for line in results[0].stderr.splitlines() if line.strip()]
    assert results[0].exit_code == 1 and len(lines) == 1, results[0].output
    assert "127.0.0.1:1" in lines[0] and "--main_process_ip" in lines[0] and "--connect-timeout" in lines[0]
    assert not out.exists()


class Attempts:
    """`socket.create_connection` refused, counting the attempts."""

    def __init__(self):
        self.count = 0

    def __call__(self, address, timeout=None):
        self.count += 1
        raise ConnectionRefusedError(111, "Connection refused")


def test_a_refused_address_is_retried_only_where_the_other_side_may_still_be_starting(monkeypatch):
    attempts = Attempts()
    monkeypatch.setattr(socket, "create_connection", attempts)
    assert rendezvous.unreachable("127.0.0.1", 1, 30.0, retry_refused=False) == "Connection refused"
    assert attempts.count == 1  # a Ray head, or torchrun's agent store, is already up: a refusal is the answer
    attempts.count = 0
    assert rendezvous.unreachable("127.0.0.1", 1, 1.2) == "Connection refused"
    assert attempts.count >= 2  # rank 0 may still be starting its store: tried again until the timeout
    # under torchrun's agent (accelerate launch) the store is up before the processes start: even rank 0 probes it,
    # and the first refusal fails the run
    launcher = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
                "TORCHELASTIC_USE_AGENT_STORE": "True"}  # fmt: skip
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    attempts.count = 0
    with pytest.raises(devices.DeviceError, match="127.0.0.1:1"):
        check_rendezvous(30.0)
    assert attempts.count == 1
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")
    attempts.count = 0
    check_rendezvous(30.0)  # rank 0 hosts the store itself: nothing to reach
    assert attempts.count == 0


def test_an_address_that_stays_silent_is_tried_until_the_connect_timeout(monkeypatch):
    """No refusal, no answer (a firewall that drops packets): each attempt waits at most what is left of the
    timeout, and the reason is that it timed out."""
    waits = []

    def silent(address, timeout=None):
        waits.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    assert rendezvous.unreachable("192.0.2.1", 6379, 1.2, retry_refused=False) == "timed out"
    assert waits and all(0.1 <= wait <= 1.2 for wait in waits)


def test_a_ray_address_that_answers_nothing_fails_in_seconds(manifest, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "curated"
    video = next((manifest.parent / "clips").glob("*.mp4"))
    args = ["curate", str(video), "--out", str(out), "--engine", "ray", "--ray-address", "127.0.0.1:1",
            "--connect-timeout", "2", "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "--ray-address 127.0.0.1:1" in lines[0] and "ray start --head" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("command", ["train-teacher", "distill"])
def test_a_dead_rendezvous_fails_before_torch_is_imported(tmp_path, command):
    """The probe runs before the commands' heavy imports, so a dead address fails within the connect timeout of
    the command's start (the imports alone took 17 s on a loaded 2-core CPU)."""
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(b"")
    extra = ["--teacher", str(tmp_path)] if command == "distill" else []
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fada_cli.main import app\n"
        f"args = [{command!r}, '--manifest', {str(manifest)!r}, '--out', {str(tmp_path / 'out')!r}, "
        f"'--connect-timeout', '1', *{extra!r}]\n"
        "result = CliRunner().invoke(app, args)\n"
        "print(result.exit_code, 'torch' in sys.modules)\n"
        "print(result.output)\n"
    )
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    first, *output = done.stdout.splitlines()
    assert first == "1 False", done.stdout + done.stderr[-2000:]  # failed, and torch was never imported
    assert any("cannot reach the rendezvous" in line and "127.0.0.1:1" in line for line in output)
    assert not (tmp_path / "out").exists()
