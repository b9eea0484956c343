"""Training under torchrun: two CPU processes (gloo) with DistributedDataParallel."""

import json
import subprocess
import sys
from pathlib import Path

from mner.train.checkpoint import load_checkpoint
from mner.train.sample import write_sample_corpus

SCRIPT = """
import hashlib, json, sys
from pathlib import Path
import torch
from mner.train import trainer

captured = {}
ddp = torch.nn.parallel.DistributedDataParallel

class Watched(ddp):  # keeps the wrapped model so its final weights can be compared across ranks
    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        captured["model"] = module

torch.nn.parallel.DistributedDataParallel = Watched
data, out, report = map(Path, sys.argv[1:4])
small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16}
summary = trainer.train(trainer.TrainArgs(data_dir=data, out_dir=out, preset="tiny", epochs=2, batch_size=4, seed=3,
                                          device="cpu", model_overrides=small))
digest = hashlib.sha256()
for name, tensor in sorted(captured["model"].state_dict().items()):
    digest.update(name.encode()); digest.update(tensor.detach().cpu().numpy().tobytes())
report.with_name(f"{report.name}.{summary['rank']}").write_text(json.dumps(
    {"rank": summary["rank"], "weights": digest.hexdigest(), "has_test": "test" in summary,
     "epochs": len(summary["history"])}))
"""


def test_two_processes_train_in_step_and_rank_0_writes_best_pt(tmp_path):
    data = write_sample_corpus(tmp_path / "data", seed=0, sizes={"train": 24, "valid": 6, "test": 6})
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(data), str(tmp_path / "run"), str(tmp_path / "report")]  # fmt: skip
    process = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"report.{rank}").read_text()) for rank in (0, 1)]
    # Gradients are averaged across the ranks every step, so both end with the same weights.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert [r["has_test"] for r in ranks] == [True, False]  # rank 0 evaluates and saves
    assert ranks[0]["epochs"] == 2
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    assert checkpoint.payload["metrics"]["test"]["micro"]["support"] > 0
