"""One training loop for every family.

Device auto-detection, bf16 autocast on CUDA, EMA weights, gradient clipping, warm-up + cosine LR,
periodic validation loss / NLL and small-sample metrics, atomic checkpoints every N steps and on
SIGINT/SIGTERM, ``--resume`` into the same MLflow run, seeds, a progress bar, and DDP when launched
by ``torchrun`` (gloo on CPU, NCCL on GPU). Families only provide ``loss``, ``sample`` and
``log_likelihood`` (:class:`molgen.models.base.Generator`).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.loader import DataLoader

from molgen import distributed as dist_utils
from molgen.checkpoint import (
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_NAME,
    save_checkpoint,
)
from molgen.config import RunConfig
from molgen.data.canonical import canonical_qm9_smiles
from molgen.data.datasets import load_dataset
from molgen.data.graphs import DatasetStats, compute_stats, make_graphs, select_indices
from molgen.ema import EMA
from molgen.errors import MolgenError
from molgen.models.registry import get_family
from molgen.tracking import Tracker
from molgen.tracking_store import resolve_tracking_uri, run_exists


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_id: str | None
    checkpoint: Path
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    samples_sdf: Path | None = None
    interrupted: bool = False
    is_main: bool = True
    chunk_end: bool = False  # stopped by ``chunk_steps`` before the run's last step


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks; a second one aborts at once."""

    def __init__(self) -> None:
        self.raised = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ANN001
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def lr_factor(step: int, cfg: RunConfig, total_steps: int) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio``."""
    tc = cfg.train
    if step < tc.warmup_steps:
        return (step + 1) / max(1, tc.warmup_steps)
    if tc.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps))
    return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _cycle(loader: DataLoader, sampler: Any, start_epoch: int) -> Iterator[Any]:
    epoch = start_epoch
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _check_writable(folder: Path) -> None:
    """One-line :class:`MolgenError` unless ``folder`` can be created and written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise MolgenError(f"cannot write checkpoints to {folder} ({exc.strerror or exc}); "
                          "set another folder with --set train.out_dir=DIR") from None


class Trainer:
    """Holds the state of one training run; :meth:`run` trains to ``cfg.train.steps``."""

    def __init__(self, cfg: RunConfig, *, tracking_uri: str | None = None, resume: dict | None = None,
                 progress: bool = True, log=print, chunk_steps: int | None = None) -> None:
        self.cfg = cfg
        self.chunk_steps = chunk_steps
        self.log = log
        self.info, self.device = dist_utils.setup(cfg.train.device)
        self.progress = progress and self.info.is_main
        torch.manual_seed(cfg.train.seed)
        family = get_family(cfg.model)
        if cfg.train.compile and not family.supports_compile:
            raise MolgenError(f"train.compile does not apply to '{cfg.model}': its loss differentiates through "
                              "the network's gradient (double backward), which torch.compile does not support")
        self.branched_from = (resume or {}).get("branched_from")
        self._build_data(resume)
        self._build_model(family)
        run_id = self._restore(resume)
        self._build_loader()
        self._open_run(tracking_uri, run_id)

    # ------------------------------------------------------------------ setup steps
    def _build_data(self, resume: dict | None) -> None:
        """Load ``cfg.data.dataset`` (:mod:`molgen.data.datasets`), select the split, and set
        ``stats`` (the checkpoint's when resuming), ``train_graphs``, ``valid_graphs`` and
        ``train_smiles`` (canonical SMILES of the training molecules, for novelty)."""
        cfg = self.cfg
        data = load_dataset(cfg.data.dataset, cfg.data.cache_dir)
        idx = select_indices(data, **cfg.data.selection())
        self.stats = (
            DatasetStats.from_dict(resume["stats"]) if resume else compute_stats(data, idx["train"], cfg.data.properties)
        )
        self.train_graphs = make_graphs(data, idx["train"], self.stats)
        self.valid_graphs = make_graphs(data, idx["valid"][: cfg.train.val_batches * cfg.train.batch_size], self.stats)
        canonical = canonical_qm9_smiles(data, cfg.data.cache_dir)
        self.train_smiles = {canonical[i] for i in idx["train"].tolist()} - {None}
        if len(self.train_graphs) < cfg.train.batch_size * self.info.world_size:
            raise MolgenError(f"only {len(self.train_graphs)} training molecules for batch size {cfg.train.batch_size}")

    def _build_model(self, family: Any) -> None:
        """The family's model on the device, its EMA copy, ``torch.compile`` of the backbones when
        ``train.compile`` (after the EMA copy: evaluation and sampling stay eager) and AdamW."""
        cfg = self.cfg
        self.model = family(cfg, self.stats).to(self.device)
        self.ema = EMA(self.model, cfg.train.ema_decay)
        if cfg.train.compile:
            from molgen.nn.backbone import compile_backbones

            compile_backbones(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, amsgrad=True)
        self.step = 0
        self.epoch = 0

    def _restore(self, resume: dict | None) -> str | None:
        """Load weights, EMA, optimizer, step and epoch from a resume payload (and reseed so the
        continued run does not replay the first batches); returns the MLflow run id to continue."""
        if not resume:
            return None
        self.model.load_state_dict(resume["model"])
        self.ema.load_state_dict(resume["ema_state"])
        self.optimizer.load_state_dict(resume["optimizer"])
        self.step = int(resume["step"])
        self.epoch = int(resume.get("epoch", 0))
        torch.manual_seed(self.cfg.train.seed + self.step)
        return resume.get("run_id")

    def _build_loader(self) -> None:
        """The training DataLoader (a DistributedSampler under DDP), ``total_steps`` and ``net``
        (the model, DDP-wrapped when distributed)."""
        cfg = self.cfg
        sampler = None
        if self.info.enabled:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(self.train_graphs, shuffle=True, seed=cfg.train.seed, drop_last=True)
        self.sampler = sampler
        self.loader = DataLoader(
            self.train_graphs, batch_size=cfg.train.batch_size, shuffle=sampler is None, sampler=sampler,
            drop_last=True, num_workers=cfg.train.num_workers,
        )
        self.total_steps = cfg.train.steps if cfg.train.epochs is None else cfg.train.epochs * len(self.loader)
        self.net = (
            DistributedDataParallel(self.model, find_unused_parameters=True) if self.info.enabled else self.model
        )

    def _open_run(self, tracking_uri: str | None, run_id: str | None) -> None:
        """Open (or, with ``run_id``, continue) the MLflow run on the main process, share its id with
        every process, set ``out_dir`` and log the parameters."""
        cfg = self.cfg
        if self.info.is_main:
            _check_writable(Path(cfg.train.out_dir))  # before the run opens, not at the first checkpoint
        tags = {"molgen.kind": "train", "molgen.family": cfg.model}
        if self.branched_from:
            tags["molgen.branched_from"] = self.branched_from
        if cfg.preset:
            tags["molgen.preset"] = cfg.preset
        if run_id and self.info.is_main and not run_exists(run_id, resolve_tracking_uri(tracking_uri)):
            # a checkpoint carried to another machine (a CPU campaign across sessions): same step count, new run
            self.log(f"warning: MLflow run {run_id} is not in this tracking store; continuing step {self.step} "
                     "in a new run (tag molgen.resumed_from)")
            tags["molgen.resumed_from"] = run_id
            run_id = None
        self.tracker = Tracker(
            tracking_uri, "molgen", run_id=run_id, run_name=None if run_id else f"{cfg.model}",
            tags=tags, enabled=self.info.is_main,
        )
        self.run_id = dist_utils.broadcast_object(self.tracker.run_id, self.info)
        self.out_dir = Path(cfg.train.out_dir) / (self.run_id or "run")
        if self.info.is_main:
            self.tracker.log_params(
                {**cfg.to_dict(), "n_train": len(self.train_graphs), "world_size": self.info.world_size,
                 "n_params": sum(p.numel() for p in self.model.parameters())}
            )
        self.history: dict[str, list[tuple[int, float]]] = {}

    # ------------------------------------------------------------------ pieces
    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _record(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.history.setdefault(k, []).append((self.step, float(v)))
        self.tracker.log_metrics(metrics, step=self.step)

    def checkpoint(self) -> Path:
        path = self.out_dir / CHECKPOINT_NAME
        if self.info.is_main:
            save_checkpoint(
                path, config=self.cfg.to_dict(), stats=self.stats.to_dict(), model=self.model.state_dict(),
                ema=self.ema.shadow.state_dict(), ema_state=self.ema.state_dict(),
                optimizer=self.optimizer.state_dict(), step=self.step, epoch=self.epoch, run_id=self.run_id,
            )
            self.tracker.log_artifact(path, CHECKPOINT_ARTIFACT)
        dist_utils.barrier(self.info)
        return path

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self.ema.shadow
        losses, nlls = [], []
        for i, batch in enumerate(DataLoader(self.valid_graphs, batch_size=self.cfg.train.batch_size)):
            batch = batch.to(self.device)
            with self._autocast():
                losses.append(float(model.loss(batch)["loss"]))
                ll = model.log_likelihood(batch) if i < self.cfg.train.val_nll_batches else None
            if ll is not None:
                nlls.append(float(-ll.float().mean()))
        out = {"val/loss": sum(losses) / max(1, len(losses))}
        if nlls:
            out["val/nll"] = sum(nlls) / len(nlls)
        return out

    @torch.no_grad()
    def sample_metrics(self, n: int) -> tuple[dict[str, float], list]:
        from molgen.metrics.basic import basic_metrics

        mols = self.ema.shadow.sample(n, steps=self.cfg.train.eval_sampling_steps, seed=self.cfg.train.seed)
        metrics = basic_metrics(mols, train_smiles=self.train_smiles)
        return {f"sample/{k}": float(v) for k, v in metrics.items() if k != "n"}, mols

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainResult:
        """Train to the configured number of steps; a crash marks the MLflow run FAILED (KILLED on abort)."""
        try:
            return self._run()
        except KeyboardInterrupt:
            self.tracker.finish("KILLED")
            raise
        except BaseException:
            self.tracker.finish("FAILED")
            raise

    def _run(self) -> TrainResult:
        cfg, tc = self.cfg, self.cfg.train
        batches = _cycle(self.loader, self.sampler, self.epoch)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {cfg.model}", unit="step",
                       dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
        t0, seen = time.time(), 0
        interrupted = False
        stop_at = self.total_steps if self.chunk_steps is None else min(self.total_steps, self.step + self.chunk_steps)
        with _StopFlag() as stop:
            while self.step < stop_at:
                self.model.train()
                for group in self.optimizer.param_groups:
                    group["lr"] = tc.lr * lr_factor(self.step, cfg, self.total_steps)
                batch = next(batches).to(self.device)
                with self._autocast():
                    out = self.net(batch)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise MolgenError(f"loss became {float(loss)} at step {self.step}; lower train.lr or check the data")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                self.optimizer.step()
                self.ema.update(self.model)
                self.step += 1
                seen += batch.num_graphs
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                if self.step % tc.log_every == 0 or self.step == self.total_steps:
                    dt = time.time() - t0
                    self._record({
                        **{f"train/{k}": float(v.detach()) for k, v in out.items()},
                        "train/grad_norm": float(gnorm), "train/lr": self.optimizer.param_groups[0]["lr"],
                        "train/molecules_per_s": seen * self.info.world_size / max(dt, 1e-9),
                    })
                    t0, seen = time.time(), 0
                if self.info.is_main and (self.step % tc.val_every == 0 or self.step == self.total_steps):
                    self._record(self.validate())
                if self.info.is_main and tc.eval_every and self.step % tc.eval_every == 0 and self.step != self.total_steps:
                    self._record(self.sample_metrics(tc.eval_samples)[0])
                if self.step % tc.checkpoint_every == 0:
                    self.checkpoint()
                self.epoch = self.step // max(1, len(self.loader))
                if dist_utils.any_flag(stop.raised, self.info, self.device):
                    interrupted = True
                    break
        if bar is not None:
            bar.close()
        path = self.checkpoint()
        if interrupted or self.step < self.total_steps:  # SIGTERM, or the end of a --chunk-steps chunk
            self.tracker.finish("KILLED")
            dist_utils.teardown(self.info)
            return TrainResult(self.run_id, path, self.step, interrupted=interrupted, chunk_end=not interrupted,
                               is_main=self.info.is_main)
        result = TrainResult(self.run_id, path, self.step, is_main=self.info.is_main)
        if self.info.is_main:
            result = self._finish(path)
        self.tracker.finish("FINISHED")
        dist_utils.teardown(self.info)
        return result

    def _finish(self, path: Path) -> TrainResult:
        """Final sample, its metrics and the artifacts a user looks at in MLflow."""
        from molgen.chem.build import build_mol, sanitize
        from molgen.chem.io import write_molecules
        from molgen.plots import loss_curve_png, molecule_grid_png
        from molgen.viewer import write_viewer

        self.log(f"sampling {self.cfg.train.eval_samples} molecules for the final evaluation ...")
        metrics, mols = self.sample_metrics(self.cfg.train.eval_samples)
        self._record(metrics)
        sdf = self.out_dir / "samples.sdf"
        write_molecules(mols, sdf)
        write_molecules(mols, self.out_dir / "samples.smi")
        molecule_grid_png([sanitize(build_mol(m))[0] for m in mols[:16]], self.out_dir / "samples_grid.png")
        write_viewer(mols, self.out_dir / "samples_viewer.html", title=f"molgen {self.cfg.model} samples")
        loss_curve_png({k: v for k, v in self.history.items() if k in ("train/loss", "val/loss")},
                       self.out_dir / "loss_curve.png")
        for name in ("samples.sdf", "samples.smi", "samples_grid.png", "samples_viewer.html", "loss_curve.png"):
            self.tracker.log_artifact(self.out_dir / name, "samples" if name.startswith("samples") else None)
        self.tracker.log_model(path, step=self.step)
        return TrainResult(self.run_id, path, self.step, metrics=metrics, samples_sdf=sdf)


def train(cfg: RunConfig, *, tracking_uri: str | None = None, progress: bool = True, log=print) -> TrainResult:
    """Train a fresh model for ``cfg``."""
    return Trainer(cfg, tracking_uri=tracking_uri, progress=progress, log=log).run()
