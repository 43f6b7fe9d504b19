"""A strict accelerator for CPU-only machines: catches tensors left on the wrong device without a GPU.

On a GPU, a tensor built without `device=` lands on the CPU and the first op that mixes it with the
model's tensors fails ("Expected all tensors to be on the same device"). On the CPU every tensor is on
the one device, so no CPU test can see that bug. Here, inside `simulated_accelerator()`, the device
named `SIMULATED` is a second device: tensors moved or created there carry real CPU data inside a
wrapper that reports that device, every op runs on the data, and an op that mixes them with ordinary
CPU tensors fails the way CUDA does. CUDA's own exceptions are kept: CPU scalars (0-dim tensors)
mix with anything, and indexing takes CPU indices.

The device type is `lazy` (torch's lazy-tensor device, unused otherwise here): its device guard ships
in every torch build and autograd runs its backward on the calling thread, so `Module.to`, backward
and the optimisers work without any driver. Faking `cuda` reaches the CUDA runtime through autograd's
stream bookkeeping and fails without a GPU; faking `meta` collides with libraries that build models
on `meta` before loading weights (transformers). The cost: code that chooses by `device.type ==
"cuda"` (autocast dtypes, NCCL, fused optimisers) takes its CPU branch here.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

SIMULATED = torch.device("lazy")
_aten = torch.ops.aten
# Ops that CUDA runs across devices: copies between devices, and indexing with CPU index tensors.
_CROSS_DEVICE_OPS = frozenset({_aten._to_copy.default, _aten.copy_.default, _aten.index.Tensor,
                               _aten.index_put_.default, _aten.index_put.default, _aten._index_put_impl_.default})


class DeviceMismatch(RuntimeError):
    pass


class OnSimulatedDevice(torch.Tensor):
    """A CPU tensor presented as living on SIMULATED."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        t = torch.Tensor._make_wrapper_subclass(
            cls, data.size(), strides=data.stride(), storage_offset=data.storage_offset(), dtype=data.dtype,
            layout=data.layout, device=SIMULATED, requires_grad=data.requires_grad)
        t.data_on_cpu = data
        return t

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:
        return f"OnSimulatedDevice({self.data_on_cpu!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _is_simulated(device) -> bool:
    return device is not None and torch.device(device).type == SIMULATED.type


def _run(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    simulated = [t for t in flat if isinstance(t, OnSimulatedDevice)]
    # the device the op puts its result on, if it names one (factories, `to`; positional or keyword)
    target = [torch.device(d) for d in flat if isinstance(d, torch.device)]
    target += [torch.device(kwargs["device"])] if isinstance(kwargs.get("device"), str) else []
    to_simulated = any(d.type == SIMULATED.type for d in target)
    if not simulated and not to_simulated:
        return func(*args, **kwargs)
    on_cpu = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, OnSimulatedDevice) and t.dim() > 0]
    if simulated and on_cpu and func not in _CROSS_DEVICE_OPS:
        shapes = ", ".join(str(tuple(t.shape)) for t in on_cpu)
        raise DeviceMismatch(f"Expected all tensors to be on the same device, but found at least two devices, "
                             f"{SIMULATED} and cpu! ({func}; CPU tensors of shape {shapes})")

    def on_cpu_instead(x):
        if isinstance(x, OnSimulatedDevice):
            return x.data_on_cpu
        if isinstance(x, torch.device) or (x is kwargs.get("device") and isinstance(x, str)):
            return torch.device("cpu") if _is_simulated(x) else x
        return x

    out = func(*tree_map(on_cpu_instead, args), **tree_map(on_cpu_instead, kwargs))
    if target and not to_simulated:
        return out  # moved off the simulated device
    same = {id(t.data_on_cpu): t for t in simulated}  # in-place ops return their input
    # A wrapper made inside inference mode is an inference tensor, which autograd's view tracking
    # refuses as the view of a normal tensor: wrappers are made as normal tensors.
    with torch.inference_mode(False):
        return tree_map(lambda t: (same[id(t)] if id(t) in same else OnSimulatedDevice(t))
                        if isinstance(t, torch.Tensor) else t, out)


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


# Tensors built from Python data are copied to their device inside torch, below the dispatcher: they
# are built on the CPU and moved, which the dispatch mode sees.
_FROM_DATA = (torch.tensor, torch.as_tensor, torch.asarray)


class _FromDataMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FROM_DATA and _is_simulated(kwargs.get("device")):
            return func(*args, **{**kwargs, "device": "cpu"}).to(SIMULATED)
        if func is torch.Tensor.tolist and isinstance(args[0], OnSimulatedDevice):  # a host sync, as on CUDA
            return args[0].data_on_cpu.tolist()
        if func is torch.Tensor.new_tensor and isinstance(args[0], OnSimulatedDevice) and "device" not in kwargs:
            return args[0].data_on_cpu.new_tensor(*args[1:], **kwargs).to(SIMULATED)
        return func(*args, **kwargs)


@contextlib.contextmanager
def simulated_accelerator():
    """Inside, `SIMULATED` (device name "lazy") behaves as a second device; see the module docstring."""
    with _FromDataMode(), _Mode():
        yield SIMULATED
