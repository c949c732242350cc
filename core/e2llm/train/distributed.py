"""Several processes: the process group, DDP or FSDP, and what sharded tensors need.

    ddp   every process holds the whole engine; torch DDP averages the gradients. Suits
          decoders up to a few billion parameters.
    fsdp  the decoder's transformer layers are sharded over the processes with torch FSDP2
          (``fully_shard``): each process stores 1/N of every layer (frozen weights, LoRA and
          its optimizer state) and gathers a layer only while it runs. The encoder, the adapter
          and the decoder's embeddings stay whole on every process (small next to the layers;
          the splice looks embeddings up outside the decoder's forward), so their gradients
          are averaged here by hand.

Checkpoints are the same files either way: sharded tensors are gathered before writing and
split again on resume, so a run can resume under the other strategy or process count.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from datetime import timedelta
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ..errors import ConfigError, DeviceError, TrainingError


def launched() -> bool:
    """Whether torchrun / accelerate launch started this process (with one process too: a
    world-size-1 run still goes through the process group, DDP and the collectives)."""
    env = os.environ
    return int(env.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in env or ("LOCAL_RANK" in env and "MASTER_ADDR" in env)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world() -> int:
    """Processes the launcher started on this machine (1 when not launched)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1


def dist_info(device: torch.device | str = "cpu", timeout_s: float | None = None) -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun / accelerate launch set up, with
    NCCL when this process trains on a GPU (``device``, from :func:`device_for`) and gloo
    otherwise. On a GPU the process first makes it its current device: NCCL and every tensor
    made without naming a device then land there, not all on GPU 0. timeout_s: how long a
    collective may wait for the slowest process (torch's default for NCCL is 10 minutes)."""
    device = torch.device(device)
    if launched() and not dist.is_initialized():
        timeout = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device, **timeout)
        else:
            dist.init_process_group("gloo", **timeout)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave_process_group() -> None:
    """Tear the process group down before the process exits (a no-op with one process). Left to
    interpreter shutdown, its threads can abort a process whose training had finished: seen once
    in CI, a SIGABRT ("terminate called without an active exception") in an FSDP run's second
    process after its last step."""
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: str) -> torch.device:
    """This process's training device, checked by ``devices.resolve_device`` (one line for a
    device that is not there). Launched, "cuda" and "auto" mean the GPU of this process's local
    rank (ranks count over machines, GPUs per machine); a named GPU ("cuda:1") is refused when
    the launcher started several processes here, since it would put them all on that one GPU."""
    from ..devices import resolve_device

    name = str(device).strip().lower()
    if name == "auto" and not torch.cuda.is_available():
        return resolve_device("auto")  # mps or cpu
    if name == "auto":
        name = "cuda"
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        return resolve_device(device)  # says which names are valid
    if parsed.type != "cuda" or not launched():
        return resolve_device(parsed)
    here = local_world()
    if parsed.index is not None:
        if here > 1:
            raise DeviceError(f"device '{device}' would put all {here} processes launched on this machine on one GPU; "
                              "use device: cuda (or auto), and each process takes the GPU of its local rank")
        return resolve_device(parsed)
    if torch.cuda.is_available() and local_rank() >= torch.cuda.device_count():
        raise DeviceError(f"{here} processes were launched on this machine but only {torch.cuda.device_count()} GPUs are "
                          "visible; launch at most that many (torchrun --nproc_per_node), or check CUDA_VISIBLE_DEVICES")
    return resolve_device(f"cuda:{local_rank()}")


def check_parallelism(parallelism: str, quantization: str) -> None:
    """fsdp cannot shard a 4-bit decoder: FSDP2 splits each parameter as a plain tensor, and
    bitsandbytes' packed 4-bit weights carry their quantization state beside the tensor (not
    tried here: refused rather than left to fail inside a launched run)."""
    if parallelism == "fsdp" and quantization != "none":
        raise ConfigError(f"parallelism fsdp cannot shard a {quantization} decoder (bitsandbytes' packed weights do not "
                          "split under FSDP2); use parallelism: ddp, or model.decoder.quantization: none")


def decoder_layers(decoder: nn.Module) -> list[nn.Module]:
    """The decoder's transformer layers (the classes it names in _no_split_modules)."""
    layer_classes = set(getattr(decoder, "_no_split_modules", None) or [])
    layers = [m for m in decoder.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ConfigError(f"parallelism 'fsdp': cannot find the transformer layers of {type(decoder).__name__} "
                          "(it names none in _no_split_modules); use parallelism 'ddp'")
    return layers


def move_all_but(module: nn.Module, skip: list[nn.Module], device: str) -> None:
    """Move ``module``'s parameters and buffers to ``device``, except those inside ``skip``
    (the decoder layers FSDP moves one at a time while sharding them): no GPU ever holds the
    whole decoder. The Parameter objects stay the same (only their data moves)."""
    skipped = {id(m) for s in skip for m in s.modules()}
    with torch.no_grad():
        for m in module.modules():
            if id(m) in skipped:
                continue
            for name, p in m._parameters.items():
                if p is not None and p.device != torch.device(device):
                    moved = p.data.to(device)
                    if torch._has_compatible_shallow_copy_type(p, moved):  # as nn.Module._apply does
                        p.data = moved
                    else:  # e.g. to "meta": swap the contents, keep the object
                        torch.utils.swap_tensors(p, nn.Parameter(moved, requires_grad=p.requires_grad))
            for name, b in m._buffers.items():
                if b is not None:
                    m._buffers[name] = b.to(device)


def shard_decoder(decoder: nn.Module, world: int, device: str, compute_dtype: torch.dtype | None) -> int:
    """FSDP2 over the decoder: one unit per transformer layer, then the rest of the decoder
    (its final norm) with the embeddings left whole. Returns the number of layer units.
    fully_shard moves each layer to the mesh's device just before splitting it: call this on a
    decoder whose layers are still on the CPU (``move_all_but`` placed the rest), and the GPU
    holds one whole layer at a time, never the whole decoder.

    compute_dtype: bf16 backbones with float32 LoRA in one layer need a common dtype to gather
    in; the layer then computes in it and reduces gradients in float32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = decoder_layers(decoder)
    mesh = init_device_mesh(torch.device(device).type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype else MixedPrecisionPolicy()
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    whole = {decoder.get_input_embeddings().weight}
    if decoder.get_output_embeddings() is not None:
        whole.add(decoder.get_output_embeddings().weight)
    fully_shard(decoder, mesh=mesh, mp_policy=policy, ignored_params=whole)
    return len(layers)


class Parallel:
    """Wraps the loss module for the strategy; the trainer calls it like the module. Every
    collective the trainer makes goes through :meth:`all_reduce`, which refuses a tensor on
    another device than the model's (NCCL rejects CPU tensors: the first multi-GPU step failed so)."""

    def __init__(self, module: nn.Module, strategy: str, world: int, device: str, partial_graphs: bool = False):
        """partial_graphs: some micro-batches leave trained parameters out of their graph (QA
        without the encoder's gradients, reconstruction without the decoder's). DDP must then look for them in the synchronising
        backward, and average what earlier micro-batches accumulated (tested against one process)."""
        self.module, self.world, self.device = module, world, torch.device(device)
        self.grouped = dist.is_initialized()  # launched: collectives run, a world of one included
        self.ddp = None
        if self.grouped and strategy == "ddp":
            self.ddp = nn.parallel.DistributedDataParallel(module, device_ids=None if self.device.type == "cpu" else [self.device],
                                                           find_unused_parameters=partial_graphs)
        self.sharded = self.grouped and strategy == "fsdp"
        # the FSDP units (already sharded when this is built), found once, not per micro-batch
        self._fsdp_units = [m for m in module.modules() if hasattr(m, "set_requires_gradient_sync")] if self.sharded else []

    def __call__(self, *args, **kwargs):
        return (self.ddp or self.module)(*args, **kwargs)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes, in place (nothing to do without a process group)."""
        if not self.grouped:
            return tensor
        if not same_device(tensor.device, self.device):
            raise TrainingError(f"a collective was handed a tensor on {tensor.device}, but the model is on {self.device}; "
                                "make the tensor on the model's device (NCCL reduces only GPU tensors)")
        dist.all_reduce(tensor)
        return tensor

    def no_sync(self, skip: bool):
        """Skip the gradient exchange for micro-batches before the last one of a step."""
        if not skip or not self.grouped:
            return nullcontext()
        if self.ddp is not None:
            return self.ddp.no_sync()
        return _FsdpNoSync(self._fsdp_units)

    def finish_backward(self, params: Iterable[nn.Parameter]) -> None:
        """fsdp: average the gradients of what is not sharded (encoder LoRA, adapter), in one call."""
        if not self.sharded:
            return
        grads = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
        if grads:
            flat = self.all_reduce(torch.cat([g.flatten() for g in grads]))
            flat /= self.world
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Global gradient norm (over every process's shards), grads scaled to at most max_norm."""
        if not self.sharded:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        grads = [p.grad for p in params if p.grad is not None]
        zero = torch.zeros((), device=self.device)
        whole = sum((g.float().pow(2).sum() for g in grads if not isinstance(g, DTensor)), zero)
        shards = self.all_reduce(sum((g.to_local().float().pow(2).sum() for g in grads if isinstance(g, DTensor)), zero.clone()))
        total = float((whole + shards).sqrt())
        scale = min(1.0, max_norm / (total + 1e-6))  # torch's rule
        if scale < 1.0:
            for g in grads:
                g.mul_(scale)
        return total


def same_device(a: torch.device, b: torch.device) -> bool:
    """Same type, and the same index where both name one: "cuda" is whichever GPU is current,
    so a tensor on "cuda:3" is on it (comparing torch.device objects would say it is not)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class _FsdpNoSync:
    def __init__(self, units: list[nn.Module]):
        self.units = units

    def __enter__(self):
        for m in self.units:
            m.set_requires_gradient_sync(False, recurse=False)

    def __exit__(self, *exc):
        for m in self.units:
            m.set_requires_gradient_sync(True, recurse=False)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on this process (a collective for sharded ones: every process calls it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(value: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``value`` (whole, read from a checkpoint) laid out like ``ref``: this process's shard of it."""
    if isinstance(ref, DTensor):
        return distribute_tensor(value.to(device=ref.device, dtype=ref.dtype), ref.device_mesh, ref.placements)
    return value
