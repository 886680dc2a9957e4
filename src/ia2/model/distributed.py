"""Several processes (`torchrun`, `accelerate launch`): which process this is, its device, and the few exchanges ia2
needs.

Everything goes through `accelerate.PartialState`, which reads either launcher's environment and joins the process
group: gloo on CPUs (no CUDA, or `accelerate launch --cpu`), NCCL with one GPU per process otherwise. Without a
launcher (WORLD_SIZE unset or 1) nothing here touches accelerate or torch.distributed and every function is the
identity, so one process runs exactly the single-process code path.

With `--fsdp` the frozen base model's parameters are sharded over the processes (FSDP2, `shard_model`): every forward
and backward pass of the model is then a collective, so each process runs as many as the others (`map_batches`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

from ia2.errors import IA2Error

if TYPE_CHECKING:
    import torch
    from accelerate import PartialState
    from torch import nn
    from torch.distributed.fsdp import FSDPModule

    from ia2.config import RunConfig

T = TypeVar("T")
R = TypeVar("R")


def launched() -> bool:
    """Whether a launcher started several processes (both set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@cache
def _state() -> PartialState:
    """accelerate's process state, set up once per process."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))


def world_size() -> int:
    """How many processes share the work (1 without a launcher)."""
    return _state().num_processes if launched() else 1


def rank() -> int:
    """This process's index among them (0 without a launcher)."""
    return _state().process_index if launched() else 0


def is_main() -> bool:
    """Whether this is the process that writes files (rows, reports, adapters, caches)."""
    return rank() == 0


def device(spec: str = "auto") -> str:
    """The device for this process: `--device` as one process reads it; under a launcher, its own GPU (by local rank)
    or the CPU, which `--device` may name but not change."""
    if not launched():
        from ia2.model import loading

        return loading.device(spec)
    own = _state().device
    if spec not in ("auto", own.type, str(own)):
        raise IA2Error(
            f"--device {spec}: under a launcher each process takes its own device ({own} here); leave "
            "--device auto (use `accelerate launch --cpu` for CPU processes on a GPU machine)"
        )
    return str(own)


def check_launch(cfg: RunConfig) -> None:
    """Reject, once at start-up, settings the launcher's environment cannot run: fsdp without several processes,
    accelerate's own FSDP (which ia2 does not read, and under which transformers may load the weights on the main
    process only), per-layer-norm with the online teacher over several processes, and a device this machine lacks."""
    from accelerate.utils import parse_flag_from_env

    device(cfg.runtime.device)
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        raise IA2Error(
            "accelerate launch --use_fsdp configures accelerate's FSDP, which ia2 does not use: "
            "launch with --multi_gpu and give ia2 --fsdp"
        )
    if cfg.runtime.fsdp and world_size() < 2:
        raise IA2Error(
            "--fsdp shards the model over several processes: start ia2 with torchrun or accelerate "
            "launch (two processes or more)"
        )
    if cfg.teacher.teacher_mode == "online" and cfg.train.per_layer_norm and world_size() > 1:
        raise IA2Error(
            "--per-layer-norm with several processes needs stored teacher activations: drop --teacher-mode online"
        )


def map_batches(model: nn.Module, batches: Sequence[T], fn: Callable[[T], R], desc: str | None = None) -> Iterator[R]:
    """`fn` of every batch, yielded in batch order on every process, one round of world_size batches at a time (so a
    caller may write results as they come): in each round process r computes batch r, and with a sharded model a
    process without a batch runs `fn` on the first one (result dropped) so that every process runs as many passes.
    `desc` shows a progress bar over the rounds."""
    world = world_size()
    from tqdm.auto import tqdm

    quiet = {"disable": True} if desc is None else {}  # else tqdm's default, which TQDM_DISABLE=1 sets
    for start in tqdm(range(0, len(batches), world), desc=desc, leave=False, **quiet):
        mine = [fn(batch) for batch in batches[start + rank() : start + world : world]]
        if not mine and sharded(model):
            fn(batches[0])
        yield from (result for theirs in everyone(mine) for result in theirs)


def everyone(obj: T) -> list[T]:
    """One object from each process, in rank order, on every process."""
    if not launched():
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def from_main(obj: T) -> T:
    """The main process's `obj` on every process, so that they take the same decision."""
    return everyone(obj)[0]


def agree(flag: bool) -> bool:
    """Whether `flag` holds on every process."""
    return all(everyone(flag))


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum tensors (on one device) over processes in place, in one fp64 exchange, so that the sum is rounded once."""
    if not launched() or not tensors:
        return
    import torch

    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    torch.distributed.all_reduce(flat)
    for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        tensor.copy_(part.view_as(tensor))


def shared_backward(
    model: nn.Module,
    items: Sequence[T],
    loss: Callable[[Sequence[T]], torch.Tensor],
    params: Sequence[nn.Parameter],
    width: int = 1,
    alone: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A data-parallel backward pass; returns the losses [width] summed over processes. Each process runs the backward
    pass of the sum of `loss` (a tensor of `width` losses) on its share of `items` (every world_size-th one from its
    rank); the gradients of `params` (zeros from a process without items, which with a sharded model runs the passes
    on the first item, gradients dropped) and the losses are summed over processes, so every process holds the same
    sums. A single process runs `alone` (the losses of all items at once) instead, when given."""
    import torch

    if alone is not None and world_size() == 1:
        losses = alone()
        losses.sum().backward()
        return losses.detach()
    local, total = list(items[rank() :: world_size()]), torch.zeros(width, device=params[0].device)
    if local:
        total = loss(local)
        total.sum().backward()
    elif sharded(model):
        loss(items[:1]).sum().backward()
        for p in params:
            p.grad = None
    _reshard(model)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    summed = total.detach().float().reshape(width).clone()
    all_reduce_sum_([p.grad for p in params] + [summed])
    return summed


def shard_model(model: nn.Module, device: str) -> None:
    """Shard a frozen model's parameters over the processes with FSDP2, each decoder layer and then the rest at the
    root, moving one whole layer at a time to `device`. Every group, the root's too, is resharded after each forward
    pass (and `_reshard` after each backward pass), so that outside a pass the model's state is the same on every
    process and the main process may read a state dict alone (saving an adapter). Adapters added later are not
    sharded: they stay whole on every process, and their gradients are summed by `shared_backward`."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ia2.model.taps import layer_modules

    mesh = init_device_mesh(torch.device(device).type, (world_size(),))
    for layer in layer_modules(model, "residual"):
        fully_shard(layer, mesh=mesh)
        for part in layer.children():
            part.register_forward_hook(partial(_gather_on_grad, layer))
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


def _gather_on_grad(layer: FSDPModule, part: nn.Module, args: tuple, output: Any) -> None:
    """Forward hook on a part of a sharded decoder layer (attention, MLP, norms): once the part's output gets its
    gradient, gather the layer's weights for the part's backward. FSDP gathers them only when the layer's own output
    gets a gradient, and a tap read by the loss bypasses it (under the ia2 loss the top tapped layer's gets none)."""
    out = output[0] if isinstance(output, tuple) else output
    import torch

    if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad:
        out.register_hook(lambda grad: layer.unshard())


def _reshard(model: nn.Module) -> None:
    """Free any weights of a sharded model that a backward pass left gathered (`_gather_on_grad` gathers them where
    FSDP's own hooks may not run), so that between passes each process holds its shards only; nothing without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def sharded(model: nn.Module) -> bool:
    """Whether the model's parameters are sharded over the processes, so that each of its passes is a collective."""
    if not launched():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def barrier() -> None:
    """Wait until every process gets here (after the main process writes what the others read)."""
    if launched():
        _state().wait_for_everyone()


def main_first() -> AbstractContextManager[Any]:
    """A block the main process runs first and the others after it, so that downloads and conversions into the
    cache happen once."""
    return _state().main_process_first() if launched() else nullcontext()


def finish() -> None:
    """Leave the process group at the end of a launched run."""
    if launched():
        _state().destroy_process_group()
