"""Fine-tuning from a trained model: --init-from through the CLI for both paradigms, mismatch errors,
train.trainable (only matching parameters change, the optimizer and checkpoints hold only them, exact
resume), deltas over a base model, and growing the vocabulary without renumbering."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from duogen.ar_models.model import MultimodalLM
from duogen.diffusion.latent import LatentDiffusionModel
from duogen.errors import CheckpointError, ConfigError
from duogen.io import load_state_dict
from duogen.train.checkpoint import latest_checkpoint, list_checkpoints
from duogen.train.engine import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).parent))
import _tiny_runs  # noqa: E402
import engine_worker as W  # noqa: E402
from _tiny_runs import cli, train_tiny_bases  # noqa: E402
from test_latent_diffusion import make_codec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

REF = Path(__file__).resolve().parents[1] / "src" / "duogen" / "assets" / "reference"
AR_TINY = [*_tiny_runs.AR_TINY, "train.log_every=1"]
DIT_TINY = [*_tiny_runs.DIT_TINY, "train.log_every=1"]
QV = "train.trainable=*.q_proj.*,*.v_proj.*"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny data set, an untrained tiny codec, and an AR and a DiT model trained 2 steps on them by the CLI."""
    root = train_tiny_bases(tmp_path_factory.mktemp("finetune"), extra=["train.log_every=1"])
    make_codec(1).save_pretrained(root / "codec_b")  # another codec, same shapes
    return root


def _same(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a if not torch.equal(a[k].float(), b[k].float()))


# ----------------------------------------------------------------------------- --init-from through the CLI


@pytest.mark.parametrize("paradigm", ["ar", "diffusion"])
def test_init_from_starts_at_the_base_weights(base, tmp_path, paradigm):
    """lr=0: the fine-tune's final weights are the base model's, bit for bit; lr>0: they move."""
    load = MultimodalLM.from_pretrained if paradigm == "ar" else LatentDiffusionModel.from_pretrained
    src = base / ("ar" if paradigm == "ar" else "dit") / "final"
    want = load(src).state_dict()
    # no --tokenizer: the base model's codec; preset model values (other widths) are ignored, not an error
    args = ["train", paradigm, "--data", str(base / "data"), "--init-from", str(src), "train.batch_size=4",
            "train.precision=fp32", "train.steps=2", "train.ema=0"]
    rc, s, err = cli(*args, "--out", str(tmp_path / "lr0"), "train.lr=0", "train.warmup_steps=0")
    assert rc == 0, err
    assert s["init_from"] == str(src) and s["delta"] is False
    got = load(tmp_path / "lr0" / "final").state_dict()
    assert got.keys() == want.keys() and _same(got, want) == []
    rc, _, err = cli(*args, "--out", str(tmp_path / "lr"), "train.lr=1e-2")
    assert rc == 0, err
    assert len(_same(load(tmp_path / "lr" / "final").state_dict(), want)) > len(want) // 2


@pytest.mark.parametrize("paradigm", ["ar", "diffusion"])
def test_init_from_mismatches_are_one_line(base, tmp_path, paradigm):
    src = base / ("ar" if paradigm == "ar" else "dit") / "final"
    args = ["train", paradigm, "--data", str(base / "data"), "--init-from", str(src), "--out", str(tmp_path / "r"),
            "train.steps=1", "train.batch_size=4"]
    rc, _, err = cli(*args, "--tokenizer", str(base / "codec_b"))
    base_codec = (base / "codec").resolve() if paradigm == "ar" else src / "codec"  # the AR model's path; DiT's copy
    assert rc != 0 and err.count("\n") == 1 and f"--tokenizer {base / 'codec_b'} is not the codec" in err
    assert f"pass --tokenizer {base_codec} or" in err
    other = tmp_path / "text"
    from duogen.tokenizers.text import train_text_tokenizer

    train_text_tokenizer([f"a {c} square moves up" for c in ("red", "blue", "green")] * 3, other, vocab_size=290)
    rc, _, err = cli(*args, "--text", str(other / "text.model"))
    assert rc != 0 and err.count("\n") == 1 and str(other / "text.model") in err and str(src) in err
    key = "model.hidden=48" if paradigm == "ar" else "dit.depth=5"
    rc, _, err = cli(*args, key)
    assert rc != 0 and err.count("\n") == 1 and "conflicts with --init-from" in err


# ----------------------------------------------------------------------------- train.trainable, deltas


def test_trainable_changes_only_matching_params_and_final_is_a_delta(base, tmp_path):
    from duogen.bridges.generate import load_generator
    from duogen.train.ar_recipe import train_ar

    src = base / "ar" / "final"
    base_sd = MultimodalLM.from_pretrained(src).state_dict()
    info = train_ar(base / "data", None, tmp_path / "ft", init_from=src, seed=1,
                    overrides=["train.steps=2", "train.batch_size=4", "train.precision=fp32", "train.lr=1e-2", QV,
                               "train.ckpt_every=1", "train.keep_last=0"])
    assert info["delta"] is True
    trained = [k for k in base_sd if ".q_proj." in k or ".v_proj." in k]
    final = tmp_path / "ft" / "final"
    # final/ holds only the changed tensors and names its base
    conf = json.loads((final / "config.json").read_text())
    assert conf["delta_of"]["path"] == str(src.resolve())
    assert sorted(load_state_dict(final / "model.safetensors")) == sorted(trained)
    ft = MultimodalLM.from_pretrained(final)
    sd = ft.state_dict()
    assert _same(sd, base_sd) == sorted(trained)
    # checkpoints and optimizer state hold only what trains
    ck = latest_checkpoint(tmp_path / "ft")
    assert sorted(load_state_dict(ck / "model.safetensors")) == sorted(trained)
    opt = load_state_dict(ck / "optimizer.safetensors")
    assert {k.split(".", 1)[1] for k in opt} == {"step", "exp_avg", "exp_avg_sq"}
    assert len(opt) == 3 * len(trained)
    # the delta and the full fine-tuned model give identical outputs; the generator loads the delta too
    ft.save_pretrained(tmp_path / "full")
    full = MultimodalLM.from_pretrained(tmp_path / "full")
    ids = torch.arange(40).reshape(2, 20) % ft.vocab.size
    assert torch.equal(ft(ids), full(ids))
    assert (final / "model.safetensors").stat().st_size < (tmp_path / "full" / "model.safetensors").stat().st_size / 2
    gen = load_generator(final)
    assert gen.kind == "ar" and torch.equal(gen.model(ids), full(ids))
    rc, s, err = cli("generate", "--model", str(final), "--prompt", "a red circle", "--out", str(tmp_path / "g"))
    assert rc == 0, err
    assert len(list((tmp_path / "g").glob("clip_*.gif"))) == 1


def test_delta_over_a_changed_or_missing_base_is_one_line(base, tmp_path):
    from duogen.io import save_state_dict, write_delta

    shutil.copytree(base / "dit" / "final", tmp_path / "base")
    m = LatentDiffusionModel.from_pretrained(tmp_path / "base")
    with torch.no_grad():
        next(m.denoiser.parameters()).add_(1.0)
    m.save_pretrained(tmp_path / "delta")
    assert write_delta(tmp_path / "delta", tmp_path / "base") == 1
    z = torch.randn(1, *m.config.latent, generator=torch.Generator().manual_seed(0))
    cond = m.encode_prompts(["a red circle"])
    t = torch.tensor([500])
    loaded = LatentDiffusionModel.from_pretrained(tmp_path / "delta")
    assert torch.equal(loaded.denoiser(z, t, cond), m.denoiser(z, t, cond))

    state = load_state_dict(tmp_path / "base" / "model.safetensors")
    k = next(iter(state))
    state[k] = state[k] + 1
    save_state_dict(state, tmp_path / "base" / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        LatentDiffusionModel.from_pretrained(tmp_path / "delta")
    assert "changed" in str(e.value) and str(tmp_path / "base") in str(e.value) and "\n" not in str(e.value)
    shutil.rmtree(tmp_path / "base")
    rc, _, err = cli("generate", "--model", str(tmp_path / "delta"), "--prompt", "x", "--out", str(tmp_path / "g"))
    assert rc != 0 and err.count("\n") == 1 and "missing" in err and str(tmp_path / "base") in err


def _toy_fit(run_dir, **kw):
    cfg = dict(steps=6, batch_size=16, lr=3e-3, warmup_steps=2, log_every=1, seed=0, ema=0.9, ckpt_every=3,
               keep_last=0, trainable="3.*,5.weight")
    cfg.update(kw)
    model = W.make_model(dropout=0.2)
    s = fit(model, W.make_loss(), W.make_data(), TrainConfig(**cfg), run_dir)
    return model, s


def test_trainable_exact_resume_and_errors(tmp_path):
    before = W.make_model(dropout=0.2).state_dict()
    straight, _ = _toy_fit(tmp_path / "a")
    changed = _same(straight.state_dict(), before)
    assert changed == ["3.bias", "3.weight", "5.weight"]
    ck = list_checkpoints(tmp_path / "a")[0]
    assert sorted(load_state_dict(ck / "model.safetensors")) == changed
    assert sorted(load_state_dict(ck / "ema.safetensors")) == changed
    # resume from step 3 in a fresh run dir: bitwise the straight run's weights
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck, tmp_path / "b" / "checkpoints" / ck.name)
    resumed, s = _toy_fit(tmp_path / "b", resume="auto")
    assert s.steps == 6 and _same(resumed.state_dict(), straight.state_dict()) == []
    # resuming with other frozen weights, or another pattern, is refused
    with pytest.raises(CheckpointError, match="frozen weights differ"):
        fit(W.make_model(seed=5, dropout=0.2), W.make_loss(), W.make_data(),
            TrainConfig(steps=6, batch_size=16, trainable="3.*,5.weight", resume=str(ck)), tmp_path / "c")
    with pytest.raises(CheckpointError, match="trained parameters differ|frozen weights differ"):
        fit(W.make_model(dropout=0.2), W.make_loss(), W.make_data(),
            TrainConfig(steps=6, batch_size=16, trainable="3.*", resume=str(ck)), tmp_path / "d")
    with pytest.raises(ConfigError) as e:
        fit(W.make_model(), W.make_loss(), W.make_data(), TrainConfig(steps=1, batch_size=16, trainable="*.q_proj.*"),
            tmp_path / "e")
    assert "'*.q_proj.*' matches no parameter" in str(e.value) and "0.weight" in str(e.value)


# ----------------------------------------------------------------------------- growing the vocabulary


def test_vocab_growth_appends_without_renumbering(tmp_path):
    from duogen.tokenizers.vocab import UnifiedVocab

    ref = json.loads((REF / "ar" / "vocab.json").read_text())
    v = UnifiedVocab.from_dict(ref)
    assert v.to_dict() == ref  # a vocabulary that never grew writes exactly what it read
    old_tokens, old_ranges = dict(v.tokens), {n: (r.start, r.size) for n, r in v.ranges.items()}
    text_size, size = v.ranges["text"].size, v.size
    i = v.add_text_token("<v1>")
    j = v.add_task_token("<edit>")
    assert (i, j, v.size) == (size, size + 1, size + 2)
    assert {t: v.tokens[t] for t in old_tokens} == old_tokens
    assert {n: (v.ranges[n].start, v.ranges[n].size) for n in old_ranges} == old_ranges
    assert v.id("<edit>") == j and v.text_to_global([5, text_size]) == [v.ranges["text"].start + 5, i]
    assert v.global_to_text(torch.tensor([i, v.ranges["text"].start])).tolist() == [text_size, 0]
    v.save(tmp_path)
    assert UnifiedVocab.load(tmp_path) == v and UnifiedVocab.load(tmp_path).text_extra == [i]


def test_placeholder_encodes_as_one_id_and_round_trips(tmp_path):
    from duogen.tokenizers.text import TextTokenizer

    tok = TextTokenizer.load(REF / "ar" / "text.model")
    plain = TextTokenizer.load(REF / "ar" / "text.model")
    caption = "a small red circle moves left"
    n = tok.vocab_size
    assert tok.add_placeholder("<v1>") == n and tok.vocab_size == n + 1
    assert tok.encode(caption) == plain.encode(caption)  # text without the placeholder: unchanged ids
    ids = tok.encode("a <v1> moves left")
    assert ids == plain.encode("a") + [n] + plain.encode("moves left")
    assert tok.decode(ids) == "a <v1> moves left" and tok.encode("<v1>") == [n]
    tok.save(tmp_path)
    again = TextTokenizer.load(tmp_path / "text.model")
    assert again.placeholders == ["<v1>"] and again.encode("a <v1> moves left") == ids


def test_ar_model_grows_tokens_and_keeps_the_reference_outputs(tmp_path):
    """The shipped reference AR: old ids and logits identical after growth, new rows copy the word, save/load."""
    m = MultimodalLM.from_pretrained(REF / "ar")
    ids = torch.tensor([[m.vocab.id("<bos>"), m.vocab.id("<t2v>")]
                        + m.vocab.text_to_global(m.text.encode("a red circle moves left")) + [m.vocab.id("<bov>")]])
    with torch.no_grad():
        before = m(ids)
    V, old_ids = m.vocab.size, dict(m.vocab.tokens)
    circle = m.vocab.text_to_global(m.text.encode("circle"))
    new = m.add_tokens(text={"<v1>": "circle"}, tasks={"<edit>": "<t2v>"})
    assert new == {"<v1>": V, "<edit>": V + 1} and {t: m.vocab.tokens[t] for t in old_ids} == old_ids
    emb, head = m.lm.get_input_embeddings().weight, m.lm.get_output_embeddings().weight
    assert torch.equal(emb[V], emb[circle].mean(0)) and torch.equal(head[V], head[circle].mean(0))
    assert torch.equal(emb[V + 1], emb[m.vocab.id("<t2v>")])
    with torch.no_grad():
        after = m(ids)
    assert torch.equal(after[..., :V], before)
    assert m.text.encode("a <v1>") == m.text.encode("a") + [m.text.vocab_size - 1]
    assert m.vocab.text_to_global([m.text.vocab_size - 1]) == [V]
    m.save_pretrained(tmp_path / "grown")
    again = MultimodalLM.from_pretrained(tmp_path / "grown")
    assert again.vocab == m.vocab and again.text.placeholders == ["<v1>"]
    with torch.no_grad():
        assert torch.equal(again(ids), after)


def test_text_encoder_grows_a_placeholder_row(tmp_path):
    m = LatentDiffusionModel.from_pretrained(REF / "dit")
    enc = m.text_encoder
    prompt = ["a red circle moves left"]
    with torch.no_grad():
        before = enc.encode(prompt).tokens
    V = enc.embed.num_embeddings
    circle = enc.tokenizer.encode("circle")
    assert enc.add_placeholder("<v1>", "circle") == V
    assert torch.equal(enc.embed.weight[V], enc.embed.weight[circle].mean(0)) and m.config.text.vocab_size == V + 1
    with torch.no_grad():
        assert torch.equal(enc.encode(prompt).tokens, before)
        grown = enc.encode(["a <v1> moves left"]).tokens
    m.save_pretrained(tmp_path / "grown")
    again = LatentDiffusionModel.from_pretrained(tmp_path / "grown")
    assert again.tokenizer.placeholders == ["<v1>"]
    with torch.no_grad():
        assert torch.equal(again.text_encoder.encode(["a <v1> moves left"]).tokens, grown)


def test_reference_ar_loads_unchanged():
    """The shipped reference AR model through duogen's loader gives the logits of a plain transformers Llama
    holding the same weights, and its vocabulary and text ids are what the files and SentencePiece say."""
    import sentencepiece as spm
    from transformers import LlamaForCausalLM

    m = MultimodalLM.from_pretrained(REF / "ar")
    assert m.vocab.to_dict() == json.loads((REF / "ar" / "vocab.json").read_text())
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto((REF / "ar" / "text.model").read_bytes())
    caption = "a big blue square moves up, then a small red circle"
    assert m.text.encode(caption) == list(sp.EncodeAsIds(caption))
    plain = LlamaForCausalLM._from_config(m.lm.config, attn_implementation="sdpa").eval()
    state = load_state_dict(REF / "ar" / "model.safetensors")
    plain.load_state_dict({k.removeprefix("lm."): v.float() for k, v in state.items()})
    ids = torch.arange(60).reshape(2, 30) * 17 % m.vocab.size
    with torch.no_grad():
        assert torch.equal(m(ids), plain(input_ids=ids).logits)


@pytest.mark.parametrize("paradigm", ["ar", "diffusion"])
def test_recipe_adds_tokens_when_fine_tuning(base, tmp_path, paradigm):
    src = base / ("ar" if paradigm == "ar" else "dit") / "final"
    extra = ["add_task_tokens=[<edit>=<t2v>]", QV] if paradigm == "ar" else ["train.trainable=text_encoder.*"]
    rc, s, err = cli("train", paradigm, "--data", str(base / "data"), "--init-from", str(src),
                     "--out", str(tmp_path / "r"), "train.steps=1", "train.batch_size=4", "train.precision=fp32",
                     "add_tokens=[<v1>=circle]", *extra)
    assert rc == 0, err
    assert s["delta"] is True
    if paradigm == "ar":
        m = MultimodalLM.from_pretrained(tmp_path / "r" / "final")  # a delta whose embedding tables grew
        assert m.text.placeholders == ["<v1>"] and m.vocab.id("<edit>") == m.vocab.size - 1
    else:
        m = LatentDiffusionModel.from_pretrained(tmp_path / "r" / "final")
        assert m.tokenizer.placeholders == ["<v1>"] and m.tokenizer.encode("<v1>") == [m.config.text.vocab_size - 1]
