"""Train a small model with DistributedDataParallel under torchrun, reporting through pipes_bus.

Run it with:
    pipes-bus run -- torchrun --standalone --nproc-per-node 2 docs/examples/train.py

Every rank opens its own writer ("rank 0", "rank 1", ...), reports its progress and its loss
every --every steps, and at the end the checkpoint: rank 0 saves the model to --out/model.pt
(the replicas are identical under DDP, so one copy is the model) and every rank reports a
materialization of it, with the digest of its own replica, so that a reader can check the
replicas agree. A cancel of the session stops every rank, and so torchrun (see training.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import pipes_bus

ASSET = "examples/train/model"


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (300)")
    parser.add_argument("--every", type=int, default=25, help="report every N steps (25)")
    parser.add_argument("--batch", type=int, default=32, help="samples per rank and step (32)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate (0.01)")
    parser.add_argument("--seed", type=int, default=0, help="the data's and the model's seed")
    parser.add_argument("--out", type=Path, default=Path("checkpoints"), help="where model.pt goes")
    # Where `pipes-bus run --injector argv` puts the context; open_worker() reads it there.
    parser.add_argument("--pipes-bus-context", help=argparse.SUPPRESS)
    return parser.parse_args()


def dataset(seed: int, n: int = 2048, features: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic regression problem: the same on every rank, for a given seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    y = x @ w + 0.5 * torch.sin(3 * x[:, :1]) + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors, by name: equal for equal replicas."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def stop_together(worker: pipes_bus.Worker) -> None:
    """Raise the session's cancel on every rank at once (a rank has heard it).

    Each rank hears a cancel on its own, up to one cancel check apart (0.25 s on a directory,
    2.5 s on an object store). The first to stop would break its peers' next collective, and
    torchrun would then send them SIGTERM: they would close with that, not with the cancel.
    So each rank waits until it has heard the cancel too, then for all the others to.
    """
    if not worker.cancel_requested.wait(60.0):
        raise RuntimeError("A peer rank heard the session's cancel; this one did not in 60 s.")
    dist.barrier()
    worker.check_cancelled()  # raises pipes_bus.Cancelled


def train(worker: pipes_bus.Worker, args: argparse.Namespace, rank: int, world: int) -> None:
    x, y = dataset(args.seed)
    x, y = x[rank::world], y[rank::world]  # this rank's shard
    torch.manual_seed(args.seed)  # DDP broadcasts rank 0's weights anyway
    model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = torch.Generator().manual_seed(args.seed + 1 + rank)

    stop = torch.zeros(1)
    for step in range(1, args.steps + 1):
        # Has any rank heard the session's cancel? Then all of them stop, at this step.
        stop[0] = float(worker.cancel_requested.is_set())
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item():
            stop_together(worker)
        pick = torch.randint(len(x), (args.batch,), generator=batches)
        loss = nn.functional.mse_loss(model(x[pick]), y[pick])
        optimizer.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks here
        optimizer.step()
        if step == 1 or step % args.every == 0 or step == args.steps:
            worker.report_progress(step, args.steps, unit="steps", label="train")
            worker.report_custom_message({"rank": rank, "step": step, "loss": loss.item()})

    with torch.no_grad():  # the final loss: the mean squared error over the whole dataset
        total = torch.stack([((model(x) - y) ** 2).sum(), torch.tensor(float(len(x)))])
    dist.all_reduce(total)
    final = (total[0] / total[1]).item()

    state = model.module.state_dict()
    path = args.out.resolve() / "model.pt"
    saved: list[Any] = [None]
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".pt.partial")
        checkpoint = {
            "model": state,
            "optimizer": optimizer.state_dict(),
            "steps": args.steps,
            "loss": final,
            "seed": args.seed,
        }
        torch.save(checkpoint, partial)
        partial.replace(path)  # never a half-written model.pt
        saved = [path.stat().st_size]
    dist.broadcast_object_list(saved, src=0)  # every rank: once the file is complete
    worker.report_materialization(
        ASSET,
        metadata={
            "path": path,
            "bytes": saved[0],
            "loss": final,
            "steps": args.steps,
            "rank": rank,
            "wrote": rank == 0,  # the other ranks hold the same replica: see params_sha256
            "params_sha256": digest(state),
        },
    )
    worker.log.info("final loss %.5f, checkpoint %s", final, path)


def main() -> None:
    args = options()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)  # one core per rank: the ranks would fight over the cores
    # on_cancel="flag": the ranks agree on a step to stop at (see stop_together).
    with pipes_bus.open_worker(label=f"rank {rank}", on_cancel="flag") as worker:
        dist.init_process_group("gloo")
        train(worker, args, rank, world)
        dist.destroy_process_group()  # on the way out with an error, the process ends anyway


if __name__ == "__main__":
    main()
