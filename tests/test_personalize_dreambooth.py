"""DreamBooth on both paradigms from tiny base models: the prior-preservation loss is the instance loss plus
w times the class loss (checked by hand on the AR model), the recipes train on paired instance / class clips,
the whole run (class clips from the frozen model, identifier, fine-tune) and its bad inputs (exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).parent))
from _tiny_runs import cli, train_tiny_bases  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = train_tiny_bases(tmp_path_factory.mktemp("pers"), dit_name="diffusion")
    from duogen.data.concepts import make_concept

    make_concept("star", root / "concept", n=4)
    return root


def test_prior_preservation_loss_is_instance_plus_w_class_by_hand(base):
    """On the AR model: paired batch -> loss equals CE(instance outputs) + w * CE(class outputs), computed here
    from the logits directly."""
    from duogen.ar_models.layouts import TrainCollator
    from duogen.ar_models.model import MultimodalLM
    from duogen.train.concept import PairedRecords, paired_collate, prior_preservation
    from duogen.train.engine import LossOutput

    m = MultimodalLM.from_pretrained(base / "ar" / "final")
    V = m.vocab.codec_range("video").size

    def rec(seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {"text_ids": torch.randint(3, 200, (5 + seed % 3,), generator=g).tolist(),
                "video_ids": torch.randint(0, V, tuple(m.spec.latent), generator=g).numpy()}

    inst, cls = [rec(i) for i in range(2)], [rec(10 + i) for i in range(3)]
    pairs = PairedRecords(inst, cls)
    assert len(pairs) == 3 and pairs[2] == (inst[0], cls[2])
    batch = paired_collate(TrainCollator(m.layouts, ["t2v"], cond_dropout=0.0))([pairs[i] for i in range(3)])
    assert batch["prior"].tolist() == [False] * 3 + [True] * 3
    w = 0.7
    fn = prior_preservation(lambda mm, b: LossOutput(*mm.loss(b)), w)
    with torch.no_grad():
        got = fn(m, batch)
        logits = m(batch["ids"], batch["prefix_len"])  # (B, T, V)

    def ce(rows: torch.Tensor) -> torch.Tensor:
        where = batch["loss_mask"][rows][:, 1:]
        return F.cross_entropy(logits[rows][:, :-1][where], batch["ids"][rows][:, 1:][where])

    want = ce(~batch["prior"]) + w * ce(batch["prior"])
    assert torch.allclose(got.loss, want, rtol=1e-5, atol=1e-6)
    assert got.metrics["loss_prior"] == pytest.approx(float(ce(batch["prior"])), rel=1e-5)


@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_dreambooth_run_with_prior_preservation(base, tmp_path, kind):
    from duogen.bridges.personalize import personalize
    from duogen.data import load_dataset

    s = personalize("dreambooth", base / kind / "final", base / "concept", tmp_path / "db", token="<v1>", n_class=3,
                    steps=3, batch_size=2, lr=1e-3, overrides=("train.log_every=1",))
    assert s["paradigm"] == kind and s["class_clips"] == 3 and s["steps"] == 3 and s["method"] == "dreambooth"
    classes = load_dataset(tmp_path / "db" / "class_clips")["train"]
    assert len(classes) == 3 and all("<v1>" not in c for c in classes["caption"])
    assert all("triangle" in c for c in classes["caption"])  # the star concept's class word
    rows = [json.loads(x) for x in (tmp_path / "db" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss_prior" in r]
    assert len(train_rows) == 3 and all(r["loss_instance"] > 0 for r in train_rows)
    from duogen.bridges.generate import load_generator

    gen = load_generator(tmp_path / "db" / "final")
    assert gen.generate(["a <v1> moves left"], n=1, seed=0).videos.shape[0] == 1


def test_bad_inputs_are_one_line(base, tmp_path):
    from duogen.bridges.personalize.dreambooth import train_dreambooth
    from duogen.errors import ConfigError, DataError

    cfg = dict(token="<v1>", n_class=2, steps=1, batch_size=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a concept"):
        train_dreambooth(base / "ar" / "final", tmp_path / "empty", tmp_path / "o1", **cfg)
    with pytest.raises(ConfigError, match="prior_weight"):
        train_dreambooth(base / "ar" / "final", base / "concept", tmp_path / "o2", **cfg, prior_weight=-1)
    rc, _, err = cli("personalize", "--model", str(base / "ar" / "final"), "--concept", str(tmp_path / "empty"),
                     "--method", "dreambooth", "--out", str(tmp_path / "o5"))
    assert rc == 2 and err.count("\n") == 1 and "not a concept" in err
    from duogen.ar_models.model import MultimodalLM

    grown = MultimodalLM.from_pretrained(base / "ar" / "final")
    grown.add_tokens(text={"<v1>": "circle"})
    grown.save_pretrained(tmp_path / "grown")
    with pytest.raises(ConfigError, match="already"):
        train_dreambooth(tmp_path / "grown", base / "concept", tmp_path / "o4", **cfg)
    assert not (tmp_path / "o4").exists()
