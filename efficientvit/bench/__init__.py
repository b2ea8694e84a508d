"""Throughput as the paper measures it: random weights, eval mode, warm-up, then timed batches until a time budget.

CPU: batch 16; GPU: batch 2048 under AMP (fp16). Models compared in one run are timed in turns, round after
round, so every model sees the same drift of a shared machine and their ratio is measured, not inferred. One module
per job:

    zoo.py      the models a bench names: ours, torchvision's mobile CNNs, timm's as `timm:<name>`
    modes.py    a model prepared in one execution mode (eager, fused, channels-last, compiled, onnxruntime, bf16)
    measure.py  timing through `efficientvit.runtime`'s one loop, interleaved throughput, peak memory, MACs
    run.py      a bench run: `BenchConfig` in, every round's samples and their metadata out, and its tables

`efficientvit bench` (efficientvit/commands/bench.py) is the command line on top.
"""
