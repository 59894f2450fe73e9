"""Would int8 beat bf16 on this CPU? Prints numbers, asserts nothing (docs: README, Performance).

    python benchmarks/int8_check.py                # published architecture, random weights, 896 x 896 input
    python benchmarks/int8_check.py --size 448 --repeats 5

int8 here is torch's dynamic quantisation (``torch.ao.quantization.quantize_dynamic``):
the linear layers' weights in int8, activations quantised per call. Printed: the
matrix products of one ViT block's MLP at the input's token count (fp32, bf16
weights, int8), the plain open_clip vision tower in each precision (at its native
240 x 240: open_clip's forward takes no other size), the share of the GEM
tower's bf16 time spent in attention (which int8 linear layers leave untouched) and
the drift of each precision's tower output from fp32. Each time is the minimum of
``--repeats`` runs, on ``--threads`` threads.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn


def best_time(function, repeats: int) -> float:
    function()  # first call: kernel selection, weight packing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def int8_dynamic(module: nn.Module) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(module), {nn.Linear}, dtype=torch.qint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=896)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import open_clip

    from fade_cli.engine.gem import GemVisionEncoder
    from fade_cli.engine.precision import cpu_features, vision_tower

    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, quantized engine "
          f"{torch.backends.quantized.engine}; {cpu_features().describe()}")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-plus-240", pretrained=None).eval()
    visual = model.visual
    tokens = (args.size // visual.conv1.kernel_size[0]) ** 2 + 1
    width = visual.conv1.out_channels

    with torch.no_grad():
        mlp = visual.transformer.resblocks[0].mlp
        x = torch.randn(1, tokens, width)
        quantized_mlp = int8_dynamic(mlp)
        bf16_mlp = copy.deepcopy(mlp).to(torch.bfloat16)
        exact = mlp(x)
        for name, run in (("fp32", lambda: mlp(x)), ("bf16 weights", lambda: bf16_mlp(x.bfloat16())),
                          ("int8 dynamic", lambda: quantized_mlp(x))):
            drift = (run().float() - exact).abs().max().item() / exact.abs().max().item()
            print(f"one block's MLP ({tokens} x {width} -> {4 * width} -> {width}), {name:12s}: "
                  f"{best_time(run, args.repeats) * 1e3:7.1f} ms, max drift {drift:.1e} of the output's range")

        native = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        pixels = torch.randn(1, 3, native, native)  # open_clip's own forward takes its native size only
        towers = {"fp32": visual, "bf16 weights": copy.deepcopy(visual).to(torch.bfloat16),
                  "int8 dynamic": int8_dynamic(visual)}
        exact = visual(pixels)
        for name, tower in towers.items():
            inputs = pixels.to(tower.conv1.weight.dtype)
            run = lambda: tower(inputs)  # noqa: E731
            drift = 1 - F.cosine_similarity(run().float(), exact).min().item()
            print(f"plain open_clip tower at {native}, {name:12s}: {best_time(run, args.repeats):6.2f} s, "
                  f"1 - cosine to fp32 {drift:.1e}")

        from torch.profiler import ProfilerActivity, profile

        encoder = GemVisionEncoder(vision_tower(model, "bf16", {}))
        pixels = torch.randn(1, 3, args.size, args.size)
        encoder(pixels)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            encoder(pixels)
        events = profiler.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
        linear = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::linear"))
        print(f"GEM tower at {args.size} in bf16: attention {attention / total:.0%} of the time, "
              f"linear layers {linear / total:.0%} (int8 could speed up only these)")


if __name__ == "__main__":
    main()
