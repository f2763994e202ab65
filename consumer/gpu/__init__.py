"""GPUs and MIG: NVML discovery, device binding, VRAM limits and GPU metrics.

Nothing here needs a GPU to import or test: pynvml (the ``gpu`` extra) is loaded only by ``load_nvml``,
and everything else runs on an ``Inventory`` or an ``NvmlApi``, real or replayed from a recording.
Import the submodules directly; this package re-exports nothing so importing one stays cheap.
"""
