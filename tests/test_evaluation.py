import torch
from torch import nn

from efficientvit.evaluation import evaluate, hits


def test_evaluation_builds_no_autograd_graph():
    """Evaluation over a whole split must not record the forward passes (a lost no_grad once made every batch's
    graph hang on the loss sum: 22 GB after 10,000 images)."""

    class Recorder(nn.Linear):
        def forward(self, x):
            assert not torch.is_grad_enabled()
            return super().forward(x)

    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), []) for _ in range(3)]
    metrics = evaluate(Recorder(3, 3), batches, torch.device("cpu"), skip_bad=False, distributed=False)
    assert 0 <= metrics["top1"] <= 100 and metrics["loss"] > 0


def test_hits_count_top1_and_top5():
    logits = torch.tensor([[0.0, 1, 2, 3, 4, 5], [5.0, 4, 3, 2, 1, 0]])
    top1, top5 = hits(logits, torch.tensor([5, 5]))  # first: ranked first; second: ranked last of six
    assert (top1.item(), top5.item()) == (1, 1)
