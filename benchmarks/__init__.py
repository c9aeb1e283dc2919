"""invsr-bench: latency per stage and end to end, memory, quality drift and roofline share of every
(backend, precision, steps, batch) configuration of InvSR x4, written as JSON + Markdown + PNG reports.

Modules, one job each: ``machine`` (what the run was on), ``timing`` (median / p90, CUDA events or
perf_counter), ``contention`` (other processes' CPU use, waiting for quiet), ``memory`` (peak host RSS /
GPU memory), ``flops`` (MACs per stage counted from the models, peak matmul rate), ``quality`` (PSNR /
SSIM against the fp32 PyTorch reference), ``runners`` (torch-eager, torch-fast, onnxruntime, tensorrt),
``engines`` (engine folders via invsr_export), ``child`` (child processes and their peak RSS),
``worker`` (one backend x precision in its own process), ``report`` / ``markdown`` / ``plots``
(outputs), ``cli`` (``invsr-bench``).
"""
