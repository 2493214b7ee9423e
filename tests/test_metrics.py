"""metrics.jsonl reading survives a run killed mid-write; top-k counting is exact."""

import torch

from visionlaunch.runfolder import MetricsWriter, read_metrics
from visionlaunch.trainers.evaluation import topk_correct


def test_writer_and_reader_round_trip_and_skip_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.write({"kind": "epoch", "split": "train", "epoch": 1, "loss": 0.5})
    writer.write({"kind": "epoch", "split": "test", "epoch": 1, "acc": 0.9})
    writer.close()
    with open(path, "a") as f:
        f.write('{"kind": "epoch", "split": "tr')  # killed mid-line
    records = read_metrics(path)
    assert [r["split"] for r in records] == ["train", "test"]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_topk_correct_counts_and_clips_k_to_the_class_count():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    top1, top2, top5 = topk_correct(logits, labels, ks=(1, 2, 5))
    assert (top1.item(), top2.item(), top5.item()) == (1, 2, 3)
