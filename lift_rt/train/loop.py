"""The training loop: one process, or one per GPU under ``torchrun`` (DistributedDataParallel).

Data order is a seeded permutation per epoch, dealt round-robin to the ranks,
so the global batch of step t is the same whatever the number of processes.
``batch`` is the global batch (split evenly over the ranks). On CUDA the batch
norms are synchronised across ranks (SyncBatchNorm), so several GPUs compute
what one would, up to summation order; CPU (gloo) runs keep per-rank batch
statistics, as PyTorch's SyncBatchNorm runs on GPUs only. Rank 0 alone
writes the progress bars, the JSONL log and the checkpoints; messages go
through ``logging`` (the command line shows them).

Checkpoints: ``epochN`` after each epoch, of which the last ``keep_last`` and the
best (lowest mean loss over its steps) stay; ``stepN`` at ``max_steps``.

Interruption: SIGINT / SIGTERM set a flag; every rank sees it at the next step
boundary (it travels with the all-reduced loss), the run saves
``interrupted.safetensors`` and stops (removed once a later checkpoint is
saved). A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from lift_rt.backbones import build_backbone, get_spec
from lift_rt.arguments import check_writable
from lift_rt.devices import device_arg
from lift_rt.data import AUTHORS_JITTER, ImageFolder, check_jitter, identity_difference
from lift_rt.pipeline import LiftPipeline
from lift_rt.train.losses import TwoScaleObjective, get_loss
from lift_rt.train.models import build_trainable
from lift_rt.train.state import (
    Position, load_training_checkpoint, read_resume_state, remove_training_checkpoint, save_training_checkpoint,
)

logger = logging.getLogger(__name__)

# Settings that define a run: a resume must use the same values.
RUN_SETTINGS: tuple[str, ...] = (
    "backbone", "facet", "layer", "upsampler", "use_image", "loss", "batch", "lr", "imsize",
    "backbone_weights", "random_init", "seed", "color_jitter",
)


@dataclass
class TrainConfig:
    """One training run; defaults are the paper's (see ``python -m lift_rt.train --help``)."""

    backbone: str
    data: str
    facet: str | None = None
    layer: int | None = None
    upsampler: str = "lift"
    use_image: bool = True
    loss: str = "cos"
    epochs: int = 5
    batch: int | None = None
    lr: float = 1e-3
    imsize: int = 448
    out: str = "runs/lift"
    resume: str | None = None
    backbone_weights: str | None = None
    random_init: bool = False
    workers: int = 4
    seed: int = 0
    device: str | None = None
    color_jitter: float = AUTHORS_JITTER
    max_steps: int | None = None
    keep_last: int = 2
    amp: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        spec = get_spec(self.backbone)
        self.facet = self.facet or spec.facet
        self.layer = spec.layer if self.layer is None else self.layer
        if self.batch is None:
            self.batch = default_batch(spec.patch_size)
        get_loss(self.loss)
        granule = 4 * spec.patch_size
        if self.imsize <= 0 or self.imsize % granule:
            raise ValueError(
                f"--imsize {self.imsize}: must be a multiple of 4 x patch = {granule} for {spec.name} "
                f"(the loss decimates the image by 2 and 4), e.g. {max(granule, self.imsize // granule * granule)}"
            )
        for name in ("epochs", "batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"--max-steps must be positive, got {self.max_steps}")
        if self.keep_last < 0:
            raise ValueError(f"--keep-last must be >= 0 (0 keeps every epoch), got {self.keep_last}")
        check_jitter(self.color_jitter, "--color-jitter")
        if self.backbone_weights is not None and self.random_init:
            raise ValueError("pass either --backbone-weights or --random-init, not both")
        if not 0 <= self.layer < spec.depth:
            raise ValueError(f"--layer {self.layer} out of range for {spec.name} (0..{spec.depth - 1})")
        if self.device is not None:
            device_arg(self.device)

    def settings(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in RUN_SETTINGS}


def train_defaults() -> dict[str, Any]:
    """``{field: default}`` of every :class:`TrainConfig` field that has one (the command line's defaults)."""
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def default_batch(patch_size: int) -> int:
    """The paper's global batch: 256 for /16 backbones, 64 for /8 (4x the tokens per image)."""
    return 256 if patch_size >= 16 else 64


class ShardSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """This rank's share of a seeded per-epoch permutation: ``perm[rank::world]``, equal lengths,
    as ``(index, epoch)`` pairs (the dataset seeds its jitter with both; persistent workers never
    see a ``set_epoch`` call on the dataset).

    :meth:`set_epoch` picks the permutation (``seed + epoch``) and how many of
    this rank's leading samples to skip (a resumed epoch).
    """

    def __init__(self, size: int, rank: int, world: int, seed: int) -> None:
        self.size, self.rank, self.world, self.seed = size, rank, world, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        share = perm[self.rank :: self.world][: self.size // self.world]
        return iter([(index, self.epoch) for index in share[self.skip :]])

    def __len__(self) -> int:
        return max(0, self.size // self.world - self.skip)


def _ignore_sigint(_: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which saves and stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# What torchrun sets for the default ``env://`` rendezvous.
LAUNCHER_VARS: tuple[str, ...] = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")


@dataclass
class Distributed:
    """Process-group facts: rank, world size, device, and whether :meth:`setup` created the group."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def setup(cls, device: str | None) -> "Distributed":
        """Join the ``torchrun`` process group if its environment is set (nccl on CUDA, else gloo).

        The group is created under torchrun whatever its size (world size 1
        included) unless one exists already; :meth:`teardown` destroys only a
        group created here.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"--device {device}: CUDA is not available on this machine")
            if dev.index is None:
                dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        launched = all(name in os.environ for name in LAUNCHER_VARS)
        owns_group = (world > 1 or launched) and not dist.is_initialized()
        if owns_group:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        rank = dist.get_rank() if dist.is_initialized() else 0
        return cls(rank=rank, world=world, device=dev, owns_group=owns_group)

    def teardown(self) -> None:
        """Destroy the process group if :meth:`setup` created it (a group made by the caller stays)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig`; :meth:`fit` runs it.

    Without ``env`` the trainer joins torchrun's process group itself and
    leaves it in :meth:`close` (``with Trainer(config) as trainer:`` closes on
    any exit); a constructor that raises has already left it.
    """

    def __init__(self, config: TrainConfig, env: Distributed | None = None) -> None:
        self.config = config
        self.owns_env = env is None
        self.env = env or Distributed.setup(config.device)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the loader's workers; leave the process group this trainer joined (not when ``env`` was given)."""
        self.loader = None  # persistent workers end with their loader
        if self.owns_env:
            self.env.teardown()

    def _build(self) -> None:
        config, env, device = self.config, self.env, self.env.device
        if config.batch % env.world:
            raise ValueError(f"--batch {config.batch} must be divisible by the number of processes ({env.world})")
        self.per_rank = config.batch // env.world
        self.out = Path(config.out)
        check_writable(self.out, "--out", folder=True)
        earlier = sorted(self.out.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) if self.out.is_dir() else []
        if earlier and not config.resume:  # the newest checkpoint is the one to continue from
            raise ValueError(f"--out {self.out} already holds a run ({', '.join(p.name for p in earlier[:3])}"
                             f"{', ...' if len(earlier) > 3 else ''}): continue it with --resume {earlier[-1]}, "
                             "or choose another --out")
        # On a terminal only, and gone when done: error messages from set-up stay one line.
        setup = _progress(3, 0, "set-up", enabled=config.progress and env.rank == 0 and sys.stderr.isatty(), unit="stage",
                          leave=False)
        try:
            self._build_parts(setup)
        finally:
            setup.close()
        self.sampler = ShardSampler(len(self.dataset), env.rank, env.world, config.seed)
        self.loader: torch.utils.data.DataLoader | None = None
        self.steps_per_epoch = len(self.dataset) // env.world // self.per_rank
        self.ddp = (
            nn.parallel.DistributedDataParallel(self.objective, device_ids=[device.index] if device.type == "cuda" else None)
            if env.active
            else self.objective
        )
        self.amp = config.amp and device.type == "cuda"

        self.stop_requested = False

    def _build_parts(self, setup) -> None:
        """The backbone, the upsampler and its optimizer, the data, the resume state; ``setup`` counts the stages."""
        config, env, device = self.config, self.env, self.env.device
        # Weights, resume file and settings are checked (by loading them) before the data.
        setup.set_postfix_str("backbone")
        backbone = build_backbone(
            config.backbone, weights=config.backbone_weights, random_init=config.random_init,
            facet=config.facet, layer=config.layer, seed=config.seed,
        ).requires_grad_(False)  # frozen (build_backbone returns it in eval mode)
        setup.update()
        self.normaliser = LiftPipeline(backbone, lift=None).to(device)
        torch.manual_seed(config.seed)
        self.model = build_trainable(config.upsampler, config.backbone, use_image=config.use_image).to(device)
        if env.active and device.type == "cuda":  # one set of batch statistics over the global batch
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.objective = TwoScaleObjective(self.model, self.normaliser.backbone, config.loss).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.position = Position()
        resume_state = self._check_resume(config.resume) if config.resume else None
        setup.set_postfix_str("images")
        self.dataset = self._dataset()
        self.data_identity = self.dataset.identity()
        setup.update()
        setup.set_postfix_str("resume state")
        if resume_state is not None:
            self._check_resume_data(config.resume, resume_state)
            self.position = load_training_checkpoint(config.resume, self.model, self.optimizer, resume_state)
        setup.update()

    def _dataset(self) -> ImageFolder:
        """The training images: at least one readable, and at least one batch of files."""
        config = self.config
        dataset = ImageFolder(config.data, config.imsize, jitter=config.color_jitter, seed=config.seed)
        dataset.require_readable()
        if len(dataset) < config.batch:
            raise ValueError(
                f"{config.data} holds {len(dataset)} images, fewer than one batch of {config.batch}; lower --batch"
            )
        return dataset

    def run_settings(self) -> dict[str, Any]:
        """What a resume must match: the settings of :data:`RUN_SETTINGS`, the number of training images and
        the data's :func:`lift_rt.data.folder_identity`."""
        return {**self.config.settings(), "data_images": len(self.dataset), "data_identity": self.data_identity}

    def _check_resume(self, path: str) -> dict[str, Any]:
        """The resume state of ``path``, after checking its settings against this run's (before any weight is loaded)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"--resume {path}: no such checkpoint file")
        state = read_resume_state(path)
        settings, current = state["settings"], self.config.settings()
        changed = {k: (settings.get(k), current[k]) for k in RUN_SETTINGS if settings.get(k) != current[k]}
        if changed:
            listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(f"--resume {path}: this run's settings differ from the checkpoint's ({listing})")
        return state

    def _check_resume_data(self, path: str, state: dict[str, Any]) -> None:
        """Refuse other data: other files, sizes or modification times than the checkpoint's (its
        :func:`~lift_rt.data.folder_identity`). A state saved before identities were recorded is
        checked by its number of images alone, with a warning."""
        settings, data, count = state["settings"], self.config.data, len(self.dataset)
        saved, identity = settings.get("data_images"), settings.get("data_identity")
        difference = identity_difference(identity, self.data_identity) if identity is not None else None
        if difference is None and saved is not None and saved != count:
            difference = "another number of image files"
        if difference is not None:
            raise ValueError(f"--resume {path}: --data {data} is not the data the checkpoint was trained on: {difference} "
                             f"(trained on {saved} images, --data holds {count}); resume with the same files, "
                             "or start a new run with another --out")
        if identity is None:
            logger.warning("--resume %s: this checkpoint predates data fingerprints; only its number of images (%s) "
                           "was checked against --data %s", path, saved, data)

    # ---- one step -------------------------------------------------------------------------
    def step(self, images: torch.Tensor, skipped: int = 0) -> torch.Tensor:
        """One optimisation step on this rank's ``B x 3 x S x S`` images in [0, 1].

        ``skipped``: how many of the images stand in for unreadable files. Returns
        ``[total, loss_2x_half, loss_2x_quarter, skipped, stop]`` summed over ranks
        (divide the losses by the world size).
        """
        image = self.normaliser.normalise(images.to(self.env.device, non_blocking=True))
        with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.amp):
            total, half, quarter = self.ddp(image)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        flags = torch.tensor([float(skipped), float(self.stop_requested)], device=total.device)
        report = torch.cat([torch.stack([total.detach().float(), half.float(), quarter.float()]), flags])
        if self.env.active:
            dist.all_reduce(report)
        if not torch.isfinite(report[0]):  # after the reduction, so every rank stops together
            raise FloatingPointError(f"the loss became {report[0].item()} at step {self.position.step + 1}; lower --lr")
        return report

    # ---- the run ----------------------------------------------------------------------------
    def fit(self) -> Path | None:
        """Train to ``epochs`` (or ``max_steps``); returns the last checkpoint written (rank 0) or None."""
        config, env = self.config, self.env
        is_main = env.rank == 0
        log = None
        if is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            log = open(self.out / "log.jsonl", "a", encoding="utf-8")
            self._log(log, event="start", world_size=env.world, device=str(env.device), position=asdict(self.position),
                      steps_per_epoch=self.steps_per_epoch, config=asdict(config))
        in_main_thread = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGINT, signal.SIGTERM) if in_main_thread else ()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        last = None
        try:
            last = self._epochs(log)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if log is not None:
                log.close()
        return last

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_requested:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop_requested = True

    def _loader(self, epoch: int, skip_batches: int) -> torch.utils.data.DataLoader:
        """The loader, positioned at ``epoch`` after ``skip_batches``. One loader for the whole run:
        its workers persist across epochs (restarting 8 of them cost ~1 s per epoch on the H100 run)."""
        self.sampler.set_epoch(epoch, skip_batches * self.per_rank)
        if self.loader is None:
            workers = self.config.workers
            self.loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=self.per_rank, sampler=self.sampler, num_workers=workers, drop_last=True,
                pin_memory=self.env.device.type == "cuda", worker_init_fn=_ignore_sigint if workers else None,
                persistent_workers=workers > 0,
            )
        return self.loader

    def _epochs(self, log) -> Path | None:
        config, env, pos = self.config, self.env, self.position
        last = None
        done = []  # a resumed run may already be where this one should stop
        if pos.epoch >= config.epochs:
            done.append(f"epoch {pos.epoch} >= --epochs {config.epochs}")
        if config.max_steps is not None and pos.step >= config.max_steps:
            done.append(f"step {pos.step} >= --max-steps {config.max_steps}")
        if done:
            if env.rank == 0:
                logger.info("nothing to train: the run is at %s", " and ".join(done))
            return None
        while pos.epoch < config.epochs:
            bar = _progress(self.steps_per_epoch, pos.batch, f"epoch {pos.epoch + 1}/{config.epochs}",
                            enabled=config.progress and env.rank == 0)
            tick, rate, epoch_start, steps = time.perf_counter(), None, time.perf_counter(), 0
            for images, skipped in self._loader(pos.epoch, pos.batch):
                report = self.step(images, int(skipped.sum())).tolist()
                pos.batch += 1
                pos.step += 1
                total, half, quarter = (value / env.world for value in report[:3])
                pos.skipped += int(report[3])
                pos.loss_sum += total
                stop = report[4] > 0
                now = time.perf_counter()
                speed = config.batch / (now - tick)
                rate = speed if rate is None else 0.9 * rate + 0.1 * speed
                tick = now
                if log is not None:
                    self._log(log, event="step", step=pos.step, epoch=pos.epoch + 1, loss=total, loss_half=half,
                              loss_quarter=quarter, images_per_s=speed, skipped=pos.skipped)
                steps += 1
                extra = {"skipped": pos.skipped} if pos.skipped else {}
                bar.set_postfix(loss=f"{total:.4f}", img_s=f"{rate:.1f}", **extra)
                bar.update(1)
                if stop:
                    bar.close()
                    return self._save("interrupted", log, event="interrupted")
                if config.max_steps is not None and pos.step >= config.max_steps:
                    bar.close()
                    return self._save(f"step{pos.step}", log)
            bar.close()
            mean_loss = pos.loss_sum / max(pos.batch, 1)
            pos.epoch += 1
            if pos.best_loss is None or mean_loss < pos.best_loss:
                pos.best_epoch, pos.best_loss = pos.epoch, mean_loss
            pos.batch, pos.skipped, pos.loss_sum = 0, 0, 0.0
            last = self._save(f"epoch{pos.epoch}", log, mean_loss=mean_loss)
            if env.rank == 0:
                self._prune()
            if env.rank == 0 and not config.progress and steps:  # without a bar, one line per epoch
                seconds = time.perf_counter() - epoch_start
                logger.info("epoch %d/%d: mean loss %.4f, %.1f images/s, %.0f s; saved %s", pos.epoch, config.epochs,
                            mean_loss, steps * config.batch / seconds, seconds, last)
        return last

    def _prune(self) -> None:
        """Keep the last ``keep_last`` epoch checkpoints up to this epoch and the best one (0: keep all)."""
        keep_last, pos = self.config.keep_last, self.position
        if not keep_last:
            return
        numbered = (re.fullmatch(r"epoch(\d+)\.safetensors", path.name) for path in self.out.iterdir())
        epochs = sorted(int(match.group(1)) for match in numbered if match and int(match.group(1)) <= pos.epoch)
        for epoch in epochs[:-keep_last]:
            if epoch != pos.best_epoch:
                remove_training_checkpoint(self.out / f"epoch{epoch}.safetensors")

    def _save(self, tag: str, log, event: str = "checkpoint", **entry: Any) -> Path | None:
        """Rank 0 writes ``out/<tag>.safetensors`` (+ sidecar; any other save removes ``interrupted.*``,
        which it supersedes) and logs ``entry`` with it; all ranks wait for it."""
        path = None
        if self.env.rank == 0:
            config = self.config
            meta = {
                "upsampler": config.upsampler, "layer": str(config.layer), "random_init": str(int(config.random_init)),
                "backbone_seed": str(config.seed), "imsize": str(config.imsize), "loss": config.loss,
            }
            path = save_training_checkpoint(self.out / f"{tag}.safetensors", self.model, self.optimizer,
                                            self.position, self.run_settings(), meta)
            if tag != "interrupted":
                remove_training_checkpoint(self.out / "interrupted.safetensors")
            self._log(log, event=event, path=str(path), step=self.position.step, **entry)
        if self.env.active:
            dist.barrier()
        return path

    @staticmethod
    def _log(log, **entry: Any) -> None:
        if log is not None:
            log.write(json.dumps({"time": time.time(), **entry}) + "\n")
            log.flush()


def _progress(total: int, initial: int, desc: str, enabled: bool, unit: str = "step", leave: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=leave)


def train(config: TrainConfig) -> Path | None:
    """Run ``config`` in this process (joining torchrun's group if launched by it); returns the last checkpoint."""
    with Trainer(config) as trainer:
        return trainer.fit()
