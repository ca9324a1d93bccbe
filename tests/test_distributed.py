"""Data-parallel training on CPU with gloo, 2 processes on 127.0.0.1.

2 ranks x batch B must train like 1 process x batch 2B: the same samples per
step and, one step at a time from the same state, the same losses, gradients
and updates up to fp32 reduction order (instance norm, dropout off, no random
label noise), on the eager and on the fast step, across an interrupt and
resume, and resumed on another number of ranks. Failures: bad input on one rank ends both with the same error; a rank
that stalls ends the other by the collective timeout; SIGTERM to torchrun
saves one checkpoint and ends every rank.

Ranks run in processes started with torch.multiprocessing (spawn) running
the trainer, or as `python -m pix2pix_fast train` with torchrun's
environment, or under torchrun itself; each with one thread.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pix2pix_fast.config import ConfigError, TrainConfig
from tiny import tiny_run
from same_step import assert_same_gradients, assert_same_updates
from pix2pix_fast.errors import DataError
from pix2pix_fast.data.synthetic import synthetic_dataset
from pix2pix_fast import checkpoint as ckpt
from pix2pix_fast.train import build as build_mod
from pix2pix_fast.train.fallback import Mode
from pix2pix_fast.train.trainer import Trainer, make_dataset, make_loader

WORLD = 2
# fp32 losses of one step from the same state, differing only in the order of a mean's sum.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    # 12 pairs: 3 global batches of 4 per epoch.
    return synthetic_dataset(tmp_path_factory.mktemp("data"), size=32, n_train=12, n_val=2, n_test=1, seed=6)


def tiny(root, out, **kw):
    return tiny_run(root, out, **{"batch_size": 4, "dropout": False, "norm": "instance", **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, port: int, timeout_s: float) -> dict[str, str]:
    """What torchrun sets for a worker (plus one thread and the collective timeout)."""
    return {"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "PIX2PIX_FAST_DIST_TIMEOUT": str(timeout_s)}


def step_losses(run_dir):
    records = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss_D"], r["loss_G_GAN"], r["loss_G_L1"]) for r in records if "loss_D" in r}


def assert_one_step_alike(got: dict, want: dict, cfg: TrainConfig) -> None:
    """Checkpoints after one step from the same initial weights: the same losses, gradients and
    updates (tests/same_step.py). Adam's first moment after one step is (1 - beta1) x the gradient."""
    from pix2pix_fast.models import build_discriminator, build_generator

    for net, model in (("G", build_generator(cfg)), ("D", build_discriminator(cfg))):
        names = [n for n, _ in model.named_parameters()]  # the optimizer's order

        def grads(state):
            return {n: state[f"opt_{net}"]["state"][i]["exp_avg"] / (1 - cfg.beta1) for i, n in enumerate(names)}

        scale = assert_same_gradients(grads(got), grads(want))
        assert_same_updates(got[net], want[net], grads(want), scale, cfg.lr)


def assert_same_losses(got: dict, want: dict) -> None:
    """Losses of the same step from the same state: they differ in the order of a mean's sum only."""
    assert got.keys() == want.keys()
    for step, losses in want.items():
        assert got[step] == pytest.approx(losses, rel=RTOL, abs=ATOL), step


def as_fast(enabled: bool):
    """The fast step on CPU (no compile, no graph), as tests/test_fallback.py runs it."""
    saved = build_mod.resolve_backend, build_mod.initial_mode
    if enabled:
        build_mod.resolve_backend = lambda cfg, device: "fast"
        build_mod.initial_mode = lambda cfg, backend, device: Mode("fast")
    return saved


# ------------------------------------------------------------- rank workers
class _Hooked:
    def __init__(self, inner, before, after):
        self.inner, self.before, self.after = inner, before, after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args):
        self.before()
        out = self.inner(*args)
        self.after()
        return out


class _FailingLoader:
    """The trainer's loader, raising a DataError when the trainer asks for batch `at_step`."""

    def __init__(self, trainer, at_step):
        self.trainer, self.inner, self.at_step = trainer, trainer.loader, at_step

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            if self.trainer.step == self.at_step:
                raise DataError("train/7.png: image file is truncated")
            yield batch


def _install_fault(trainer, fault):
    kind, step = fault["kind"], fault["step"]
    if kind == "data_error":
        trainer.loader = _FailingLoader(trainer, step)
        return
    def before():
        if kind == "stall" and trainer.step == step:
            time.sleep(fault["seconds"])  # stalls before this step's first gradient average

    def after():
        if kind == "sigterm" and trainer.step == step - 1:  # right after step number `step`
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.step_fn = _Hooked(trainer.step_fn, before, after)


def _run_job(rank: int, job: dict) -> dict:
    saved = as_fast(job.get("fast", False))
    try:
        trainer = Trainer(TrainConfig(**job["cfg"]), resume=job.get("resume"), progress=False)
        fault = job.get("fault")
        if fault is not None and fault["rank"] == rank:
            _install_fault(trainer, fault)
        t0 = time.monotonic()
        try:
            result = trainer.fit()
            out = {"status": result.status, "step": result.step}
        except Exception as e:  # reported to the test, which checks it
            from pix2pix_fast.train.distributed import is_collective_failure

            out = {"error": type(e).__name__, "message": str(e), "dist_error": is_collective_failure(e)}
        out["seconds"] = time.monotonic() - t0
        if "copy_to" in job and rank == 0:
            shutil.copy(trainer.run_dir / "latest.pt", job["copy_to"])
        if "error" not in out:
            trainer.world.barrier()  # the copy is there before any rank resumes from it
        return out
    finally:
        build_mod.resolve_backend, build_mod.initial_mode = saved


def _rank_main(rank: int, port: int, jobs: list, out_dir: str, timeout_s: float) -> None:
    os.environ.update(rank_env(rank, port, timeout_s))
    torch.set_num_threads(1)
    results = []
    for job in jobs:
        results.append(_run_job(rank, job))
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
        if "error" in results[-1]:
            os._exit(0)  # the other rank may be stalled: no teardown that waits for it
    import torch.distributed as dist

    dist.destroy_process_group()


def run_ranks(jobs: list, tmp_path: Path, timeout_s: float = 60.0, wait_s: float = 150.0,
              kill_after_first: float | None = None) -> list[list[dict]]:
    """Run `jobs` in order on 2 spawned ranks; each rank's results. Ranks still
    running `kill_after_first` seconds after the first one ended are killed."""
    out = tmp_path / "ranks"
    out.mkdir(exist_ok=True)
    ctx = mp.start_processes(_rank_main, args=(free_port(), jobs, str(out), timeout_s), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + wait_s
    first_done = None
    while any(p.is_alive() for p in ctx.processes) and time.monotonic() < deadline:
        if first_done is None and any(not p.is_alive() for p in ctx.processes):
            first_done = time.monotonic()
        if kill_after_first is not None and first_done is not None and time.monotonic() > first_done + kill_after_first:
            break
        time.sleep(0.1)
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
        p.join()
    return [json.loads((out / f"rank{r}.json").read_text()) if (out / f"rank{r}.json").is_file() else []
            for r in range(WORLD)]


# ------------------------------------------------------------------- data
def test_each_rank_gets_its_slice_of_the_single_process_batch(data_root):
    cfg = tiny(data_root, "unused", batch_size=2)
    ds = make_dataset(cfg, "train")
    single = make_loader(cfg.replace(batch_size=4), ds, train=True, device=torch.device("cpu"))
    ranks = [make_loader(cfg, ds, train=True, device=torch.device("cpu"), world=_World(r)) for r in range(WORLD)]
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        got = list(zip(*ranks))
        want = list(single)
        assert len(got) == len(want) == len(single) == len(ranks[0]) == 3
        for ((a0, b0), (a1, b1)), (a, b) in zip(got, want):
            assert torch.equal(torch.cat([a0, a1]), a) and torch.equal(torch.cat([b0, b1]), b)
    assert ranks[1].state == single.state  # global batches, global batch size


def _World(rank):
    from pix2pix_fast.train.distributed import World

    return World(rank=rank, world_size=WORLD, local_rank=rank)


# -------------------------------------------------------------- equivalence
def single_process_run(cfg: TrainConfig, fast: bool, threads: int, resume=None):
    saved, saved_threads = as_fast(fast), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = Trainer(cfg, resume=resume, progress=False).fit()
    finally:
        build_mod.resolve_backend, build_mod.initial_mode = saved
        torch.set_num_threads(saved_threads)
    return result


def test_two_ranks_train_like_one_process_with_the_double_batch(data_root, tmp_path):
    """2 x batch 2 == 1 x batch 4 on the eager and the fast step, compared one step at a time
    from the same state (tests/same_step.py): the first step from the same initial weights
    (losses, the averaged gradients, the updates); an interrupt (SIGTERM to one rank after
    step 4, mid-epoch: both stop there) and resume on 2 ranks, which is bit-exact; and the
    2-rank checkpoint resumed by 1 process (another world size, the same global batch),
    whose next step has the 2-rank run's losses."""
    single = tiny(data_root, tmp_path / "single")
    two = single.replace(batch_size=2)
    jobs, first = [], {}
    for backend in ("eager", "fast"):
        fast = backend == "fast"
        root = tmp_path / backend
        ref = single_process_run(single.replace(output_dir=str(root / "ref"), max_steps=1), fast, threads=2)
        first[backend] = ref.run_dir
        jobs += [
            {"cfg": two.replace(output_dir=str(root / "one"), max_steps=1).to_dict(), "fast": fast},
            {"cfg": two.replace(output_dir=str(root / "a")).to_dict(), "fast": fast},
            {"cfg": two.replace(output_dir=str(root / "b")).to_dict(), "fast": fast,
             "fault": {"kind": "sigterm", "rank": 1, "step": 4}, "copy_to": str(root / "interrupted.pt")},
            {"cfg": two.replace(output_dir=str(root / "b")).to_dict(), "fast": fast,
             "resume": str(root / "b" / "run" / "latest.pt")},
        ]
    results = run_ranks(jobs, tmp_path)
    for rank in range(WORLD):
        assert [r.get("status") for r in results[rank]] == ["done", "done", "interrupted", "done"] * 2, results[rank]
        assert [r["step"] for r in results[rank]] == [1, 6, 4, 6] * 2

    for backend in ("eager", "fast"):
        root = tmp_path / backend
        one = ckpt.load_checkpoint(root / "one" / "run" / "latest.pt")
        assert (one["world_size"], one["global_batch"], one["config"]["batch_size"]) == (2, 4, 2)
        assert_same_losses(step_losses(root / "one" / "run"), step_losses(first[backend]))
        assert_one_step_alike(one, ckpt.load_checkpoint(first[backend] / "latest.pt"), single)

        # The same ranks, the same code, the same reduction order: an interrupt and resume is bit-exact.
        stopped = ckpt.load_checkpoint(root / "interrupted.pt")
        assert (stopped["step"], stopped["epoch"], stopped["batch_in_epoch"]) == (4, 1, 1)
        a, b = (ckpt.load_checkpoint(root / run / "run" / "latest.pt") for run in ("a", "b"))
        assert step_losses(root / "b" / "run") == step_losses(root / "a" / "run")
        for net in ("G", "D"):
            assert all(torch.equal(v, b[net][k]) for k, v in a[net].items()), net

        # The 2-rank checkpoint resumed by one process with batch 2 x 2: its step 5 starts from
        # the state the 2-rank run's step 5 started from.
        resumed = single_process_run(single.replace(output_dir=str(root / "c"), max_steps=5), backend == "fast",
                                     threads=2, resume=root / "interrupted.pt")
        assert resumed.step == 5
        assert_same_losses(step_losses(resumed.run_dir), {5: step_losses(root / "a" / "run")[5]})


def test_resume_with_another_global_batch_is_refused_in_one_line(data_root, tmp_path):
    first = Trainer(tiny(data_root, tmp_path, max_steps=1), progress=False).fit()
    with pytest.raises(ConfigError, match=r"global batch of 4 .*this run's is 2 .*--batch-size 4") as e:
        Trainer(tiny(data_root, tmp_path, batch_size=2), resume=first.run_dir / "latest.pt", progress=False)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------- failures
def test_bad_input_on_one_rank_ends_both_with_its_error(data_root, tmp_path):
    cfg = tiny(data_root, tmp_path, batch_size=2).to_dict()
    results = run_ranks([{"cfg": cfg, "fault": {"kind": "data_error", "rank": 1, "step": 2}}], tmp_path)
    for rank in range(WORLD):
        (r,) = results[rank]
        assert r["error"] == "DataError" and r["message"] == "train/7.png: image file is truncated", (rank, r)
    # Rank 0 ended at the same step: the checkpoint of epoch 1 (3 steps) was never written.
    assert not (tmp_path / "run" / "latest.pt").exists()


def test_a_stalled_rank_ends_the_other_by_the_collective_timeout(data_root, tmp_path):
    cfg = tiny(data_root, tmp_path, batch_size=2).to_dict()
    timeout_s = 3.0
    results = run_ranks([{"cfg": cfg, "fault": {"kind": "stall", "rank": 1, "step": 1, "seconds": 300}}],
                        tmp_path, timeout_s=timeout_s, kill_after_first=2.0)
    (r0,) = results[0]
    assert r0.get("dist_error") is True, r0
    assert timeout_s <= r0["seconds"] < timeout_s + 20, r0
    assert results[1] == []  # still stalled when killed


def launch_cli(argv: list[str], tmp_path: Path, timeout_s: float = 60.0) -> list[subprocess.CompletedProcess]:
    """`python -m pix2pix_fast` on 2 ranks with torchrun's environment."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "pix2pix_fast", *argv], cwd=tmp_path,
                              env={**os.environ, **rank_env(r, port, 30)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(WORLD)]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=timeout_s)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def test_corrupt_image_ends_every_rank_with_one_line_and_status_2(data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    victim = sorted((root / "train").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 3])
    argv = ["train", "--dataroot", str(root), "--output-dir", str(tmp_path / "runs"), "--netG", "unet_32",
            "--ngf", "8", "--ndf", "8", "--load-size", "36", "--crop-size", "32", "--batch-size", "2",
            "--loader-threads", "1", "--quiet"]
    for rank, proc in enumerate(launch_cli(argv, tmp_path)):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (rank, proc.stderr)
        assert lines[0].startswith("pix2pix-fast: error:") and str(victim) in lines[0]


def test_sigterm_to_torchrun_saves_one_checkpoint_and_ends_every_rank(data_root, tmp_path):
    run = tmp_path / "runs" / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "pix2pix_fast", "train",
            "--dataroot", str(data_root), "--output-dir", str(tmp_path / "runs"), "--name", "run",
            "--netG", "unet_32", "--ngf", "8", "--ndf", "8", "--load-size", "36", "--crop-size", "32",
            "--batch-size", "2", "--epochs", "200", "--epochs-decay", "0", "--log-every", "1",
            "--save-every", "1000", "--loader-threads", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIX2PIX_FAST_DIST_TIMEOUT": "30"}
    launcher = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (run / "log.jsonl").is_file() or not (run / "log.jsonl").read_text().count("\n") >= 5:
            assert launcher.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        launcher.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=40)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    state = ckpt.load_checkpoint(run / "latest.pt")
    logged = max(step_losses(run))
    assert state["step"] == logged and state["world_size"] == WORLD  # the step both ranks stopped at
    assert output.count("interrupted at step") == 1, output  # rank 0 alone reports (and writes)
    assert not list(run.glob(".*.tmp"))
    # Every rank has ended: nothing of the launcher's process group is left.
    with pytest.raises(ProcessLookupError):
        os.killpg(launcher.pid, 0)


def test_help_says_batch_is_per_rank_and_batch_norm_is_synchronised(capsys):
    from pix2pix_fast.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "batch uses SyncBatchNorm" in text and "per rank; the global batch is batch x ranks" in text
