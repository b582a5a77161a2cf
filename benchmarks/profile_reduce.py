"""Profile one layer's streaming reduction: LLaVA-1.5-7B's shape on a GPU (11008 neurons, 576 patches, batch 16), the toy's on a CPU."""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from neuronwidgets.reduce.state import LayerState  # noqa: E402

dev = "cuda" if torch.cuda.is_available() else "cpu"
N, P, Tm, B, T = (11008, 576, 64, 16, 660) if dev == "cuda" else (384, 16, 64, 32, 60)
st = LayerState(N, P, Tm, 50, 50, 10, 4, dev)
acts = torch.randn(B, T, N, device=dev, dtype=torch.float16 if dev == "cuda" else torch.float32)
ip = (torch.arange(P, device=dev) + 5).repeat(B, 1)
tp = (torch.arange(Tm, device=dev) + P + 20).clamp(max=T - 1).repeat(B, 1)
tv = torch.zeros(B, Tm, dtype=torch.bool, device=dev)
tv[:, :40] = True
for i in range(3):
    st.update(acts, ip, tp, tv, torch.arange(B, device=dev) + B * i, [])
if dev == "cuda":
    torch.cuda.synchronize()
t0 = time.perf_counter()
for i in range(5):
    st.update(acts, ip, tp, tv, torch.arange(B, device=dev) + B * (i + 3), [])
if dev == "cuda":
    torch.cuda.synchronize()
print(f"update: {(time.perf_counter() - t0) / 5 * 1000:.1f} ms per layer per batch of {B}")
from torch.profiler import ProfilerActivity, profile  # noqa: E402

acts_ = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
with profile(activities=acts_) as prof:
    st.update(acts, ip, tp, tv, torch.arange(B, device=dev) + 1000, [])
    if dev == "cuda":
        torch.cuda.synchronize()
key = "device_time_total" if dev == "cuda" else "self_cpu_time_total"
print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=40))
