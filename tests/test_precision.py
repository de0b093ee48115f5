"""`train.precision=auto`: the policy with an injected timing and capability, the per-machine cache,
the warning for a slow explicit bf16, and runs that record the resolved precision and its reason."""

import json
import math
import warnings

import pytest
import torch
import yaml

from duogen import precision as P
from duogen.errors import ConfigError
from duogen.precision import CpuSupport, PrecisionChoice, annotate_config_yaml, cached_bf16_ratio, resolve_precision

pytestmark = pytest.mark.usefixtures("one_thread")


def _cpu(native):
    return lambda: CpuSupport(native, f"test CPU (native={native})")


def _never():
    raise AssertionError("the timing ran although the choice did not need it")


@pytest.mark.parametrize("native, ratio, expected", [
    (True, 0.3, "bf16"),   # AMX-like: bf16 matmul ~3x faster than fp32
    (True, 1.0, "bf16"),   # no slower: FAST_RATIO is inclusive
    (True, 1.3, "fp32"),   # the flag is there but the timing says slow (a VM hiding AMX, say): fp32
    (True, 30.0, "fp32"),
    (False, 30.0, "fp32"),  # an AVX2 CPU (this project's 2-core EPYC measured 24-40x)
    (False, 0.5, "fp32"),  # no native bf16: the capability decides, a fast-looking timing does not switch
    (None, 0.5, "bf16"),   # flags unreadable: the timing alone decides
    (None, 5.0, "fp32"),
])
def test_auto_follows_the_capability_and_the_measured_ratio(native, ratio, expected):
    choice = resolve_precision("auto", "cpu", measure=lambda: ratio, support=_cpu(native))
    assert choice.precision == expected and choice.ratio == ratio
    assert choice.reason.startswith("auto: ") and f"{ratio:.2g}x the fp32 time" in choice.reason
    assert f"native={native}" in choice.reason  # the reason names what the capability probe saw


def test_explicit_choices_are_kept_and_bf16_on_a_slow_cpu_warns_with_the_ratio():
    assert resolve_precision("fp32", "cpu", measure=_never, support=_cpu(True)) == PrecisionChoice("fp32", "asked for")
    with pytest.warns(UserWarning, match=r"bf16 on a CPU where it is slow .*took 31x the fp32 time"):
        slow = resolve_precision("bf16", "cpu", measure=lambda: 31.0, support=_cpu(False))
    assert slow.precision == "bf16" and slow.ratio == 31.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fast bf16: no warning
        fast = resolve_precision("bf16", "cpu", measure=lambda: 0.4, support=_cpu(True))
    assert fast.precision == "bf16"


def test_unknown_precision_is_a_config_error():
    from duogen.train.engine import TrainConfig
    from duogen.train.tokenizer_recipe import CodecTrainConfig

    with pytest.raises(ConfigError, match="allowed values: auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="auto, fp32, bf16"):
        TrainConfig(precision="fp16").check()
    with pytest.raises(ConfigError, match="auto, fp32, bf16"):
        CodecTrainConfig(precision="half").check()
    assert TrainConfig().precision == CodecTrainConfig().precision == "auto"


def test_the_ratio_is_measured_once_per_machine_and_a_bad_cache_is_measured_over(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return 17.5

    path = tmp_path / "sub" / "precision.json"  # the folder does not exist yet
    assert cached_bf16_ratio(measure, path) == 17.5 and len(calls) == 1
    assert cached_bf16_ratio(measure, path) == 17.5 and len(calls) == 1  # from the cache
    table = json.loads(path.read_text())
    assert [v["ratio"] for k, v in table.items() if k != "version"] == [17.5]
    key = next(k for k in table if k != "version")
    assert torch.__version__ in key
    for bad in ["{not json", "[1, 2]", json.dumps({"version": 1, key: {"ratio": "fast"}}),
                json.dumps({"version": 1, key: {"ratio": -1}}), json.dumps({"version": 0, key: {"ratio": 2.0}})]:
        path.write_text(bad)
        assert cached_bf16_ratio(measure, path) == 17.5
        assert json.loads(path.read_text())[key]["ratio"] == 17.5  # rewritten whole
    assert len(calls) == 6
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert cached_bf16_ratio(lambda: 3.0, blocked / "precision.json") == 3.0  # cannot write: still answers


def test_lowered_kernels_are_their_own_cache_entry(tmp_path, monkeypatch):
    """A CPU limited to AVX2 kernels (ONEDNN_MAX_CPU_ISA, as an emulated slow machine is) does not reuse the
    ratio the full CPU measured: its bf16 may be many times slower there."""
    path = tmp_path / "precision.json"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cached_bf16_ratio(lambda: 0.6, path) == 0.6
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cached_bf16_ratio(lambda: 20.0, path) == 20.0
    assert cached_bf16_ratio(lambda: 99.0, path) == 20.0  # cached under its own key
    keys = [k for k in json.loads(path.read_text()) if k != "version"]
    assert len(keys) == 2 and any("oneDNN AVX2" in k for k in keys)
    assert all(torch.backends.cpu.get_cpu_capability() in k for k in keys)


def test_an_injected_timing_is_not_cached_unless_a_path_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    resolve_precision("auto", "cpu", measure=lambda: 9.0, support=_cpu(False))
    assert not (tmp_path / "duogen" / "precision.json").exists()
    assert P.default_cache_path() == tmp_path / "duogen" / "precision.json"


def test_the_real_timing_is_short_and_finite():
    import time

    t = time.perf_counter()
    ratio = P.measure_bf16_ratio()
    assert time.perf_counter() - t < 1.0 and 0 < ratio < math.inf


def test_the_reason_is_a_comment_that_keeps_the_config_loadable():
    text = yaml.safe_dump({"model": {"precision": "x"}, "train": {"lr": 1.0, "precision": "fp32"},
                           "run": {"train": {"precision": "auto"}}}, sort_keys=False)
    out = annotate_config_yaml(text, PrecisionChoice("fp32", "auto: why: here", 2.0))
    assert "  precision: fp32  # auto: why: here" in out.splitlines()
    assert out.count("#") == 1 and yaml.safe_load(out) == yaml.safe_load(text)


def _slow_machine(monkeypatch, tmp_path, native=True, ratio=30.0):
    """Every run in this test sees the injected capability and timing, and a cache of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "measure_bf16_ratio", lambda: ratio)
    monkeypatch.setattr(P, "cpu_bf16_support", _cpu(native))


def _precision_line(config_yaml):
    return next(ln for ln in config_yaml.read_text().splitlines() if ln.startswith("  precision:"))


@pytest.mark.parametrize("ratio, expected", [(30.0, "fp32"), (0.25, "bf16")])
def test_an_engine_run_records_the_resolved_precision_and_announces_it_first(tmp_path, monkeypatch, capsys, ratio, expected):
    import engine_worker as W

    from duogen.train.engine import TrainConfig, fit

    _slow_machine(monkeypatch, tmp_path, native=True, ratio=ratio)
    cfg = TrainConfig(steps=2, batch_size=8, log_every=1)  # precision: the default, auto
    summary = fit(W.make_model(dropout=0.0), W.make_loss(), W.make_data(), cfg, tmp_path / "run")
    assert summary.precision == expected
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["train"]["precision"] == expected
    assert f"took {ratio:.2g}x the fp32 time" in _precision_line(tmp_path / "run" / "config.yaml")
    assert capsys.readouterr().err.splitlines()[0].startswith(f"precision: {expected} (auto: ")


def test_the_codec_trainer_resolves_auto_before_writing_its_config(tmp_path, monkeypatch, capsys):
    from test_codecs import VIDEO_TEST, _clips

    from duogen import config
    from duogen.tokenizers.video_codec import build_video_codec
    from duogen.train.tokenizer_recipe import VideoTokenizerRun, train_codec

    _slow_machine(monkeypatch, tmp_path, native=False)
    run = config.from_dict(VideoTokenizerRun, {"model": config.to_dict(build_video_codec("tiny", VIDEO_TEST).cfg),
                                               "train": {"steps": 1, "max_minutes": 0, "batch_size": 2, "eval_items": 1,
                                                         "eval_every_s": 1000, "stats_items": 2}})
    items = ((_clips(b=3) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    s = train_codec(run, "video", "synthetic", tmp_path / "run", train_items=items, val_items=items[:1], heldout_items=items[2:])
    assert s["precision"] == "fp32" and run.train.precision == "auto"  # the caller's config is left as given
    line = _precision_line(tmp_path / "run" / "config.yaml")
    assert line.startswith("  precision: fp32  # auto: CPU without native bf16 (test CPU") and "30x" in line
    assert config.load_yaml(VideoTokenizerRun, tmp_path / "run" / "config.yaml").train.precision == "fp32"
    assert capsys.readouterr().err.splitlines()[0].startswith("precision: fp32 (auto: ")


def test_the_audio_codec_cli_defaults_to_auto_and_records_why(tmp_path, monkeypatch, capsys):
    """The smallest recipe through its own command line, two steps: `--precision` defaults to auto."""
    pytest.importorskip("espeakng_loader")
    from test_audio_codec import SMALL

    from duogen.train import audio_codec_recipe

    _slow_machine(monkeypatch, tmp_path, native=True, ratio=12.0)
    with pytest.warns(UserWarning, match="took 12x the fp32 time"):  # an explicit bf16 where it is slow
        resolve_precision("bf16", "cpu")
    capsys.readouterr()
    assert audio_codec_recipe.cli(["--out", str(tmp_path / "a"), "--steps", "2", "--minutes", "0", "--utterances", "2",
                                   "--eval-utterances", "1", "--batch-size", "2", *SMALL]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["precision"] == "fp32"
    cfg = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert cfg["train"]["precision"] == "fp32" and cfg["run"]["recipe"]["train"]["precision"] == "auto"
    assert "auto: bf16 measured slow on this CPU (test CPU" in _precision_line(tmp_path / "a" / "config.yaml")
    assert captured.err.splitlines()[0].startswith("precision: fp32 (auto: bf16 measured slow")


def _tiny_models():
    """(name, model, loss_fn(model) -> scalar) for each recipe's model family at test size."""
    from test_audio_codec import SMALL
    from test_codecs import VIDEO_TEST, _clips

    from duogen.ar_models.layouts import LayoutSpec
    from duogen.ar_models.model import ARConfig, MultimodalLM
    from duogen.diffusion.dit import DiTConfig
    from duogen.diffusion.latent import LatentDiffusionConfig, LatentDiffusionModel
    from duogen.diffusion.text_encoder import TextEncoderConfig
    from duogen.tokenizers.audio_codec import build_audio_codec
    from duogen.tokenizers.audio_codec import codec_loss as audio_loss
    from duogen.tokenizers.losses import CodecLossConfig, codec_loss
    from duogen.tokenizers.video_codec import build_video_codec
    from duogen.tokenizers.vocab import UnifiedVocab

    torch.manual_seed(0)
    video = build_video_codec("tiny", VIDEO_TEST)
    x = _clips(b=2)  # (2, 3, 9, 16, 16)

    def video_loss(m):
        recon, q, frames = m(x)
        with torch.autocast("cpu", enabled=False):  # as the codec recipe: the loss outside autocast
            return codec_loss(recon, x if frames is None else x[:, :, frames], q.aux_loss, CodecLossConfig(), step=0).loss

    audio = build_audio_codec("tiny", SMALL)
    wave = torch.sin(torch.arange(2 * 3200.0).view(2, 1, 3200) * 0.05)  # (2, 1, 3200)
    audio.train()
    with torch.no_grad():
        audio_loss(audio, torch.sin(torch.arange(6400.0 * 8).view(16, 1, 3200) * 0.031))  # k-means init on enough frames
    spec = LayoutSpec(max_text=8, latent=(1, 2, 2), tasks=["t2v"])
    ar = MultimodalLM(ARConfig(hidden=32, layers=1, heads=2, kv_heads=2, mlp=64), UnifiedVocab(64, {"video": 125}), spec)
    ids = torch.arange(2 * 16).view(2, 16) % 64  # (B, T)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 8:] = True
    dcfg = LatentDiffusionConfig(denoiser="dit", dit=DiTConfig(hidden=32, depth=1, heads=2, patch_size=2),
                                 text=TextEncoderConfig(vocab_size=64, max_tokens=8, width=32, layers=1, heads=2),
                                 latent=[3, 3, 4, 4], cond_dropout=0.0)
    dit = LatentDiffusionModel(dcfg)
    batch = {"latents": torch.linspace(-2, 2, 2 * 3 * 3 * 16).view(2, 3, 3, 4, 4),
             "text_ids": ids[:, :8], "text_mask": torch.ones(2, 8, dtype=torch.bool)}
    return [("video codec", video, video_loss), ("audio codec", audio, lambda m: audio_loss(m, wave).loss),
            ("AR", ar, lambda m: m.loss({"ids": ids, "loss_mask": mask}).loss), ("DiT", dit, lambda m: m(batch))]


def test_every_model_family_trains_a_step_under_bf16_autocast():
    """bf16 stays covered on CPUs where `auto` never picks it: each family's loss under bf16 autocast
    is within bf16 rounding of its fp32 loss, with finite gradients, and its layers did run in bf16."""
    import copy

    from duogen.utils import autocast

    for name, model, loss_fn in _tiny_models():
        model.train()
        state = copy.deepcopy(model.state_dict())
        losses, seen = {}, set()
        hooks = [mod.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
                 for mod in model.modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))]
        for precision in ("fp32", "bf16"):
            model.load_state_dict(state)
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the same timesteps, noise and quantizer draws in both precisions
            with autocast(precision):
                loss = loss_fn(model)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(bool(torch.isfinite(g).all()) for g in grads), (name, precision)
            losses[precision] = float(loss.detach())
        for h in hooks:
            h.remove()
        assert seen == {torch.float32, torch.bfloat16}, (name, seen)  # fp32 layers, then bf16 ones under autocast
        assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05), (name, losses)


def test_cpu_ranks_agree_on_bf16_only_when_every_rank_measured_it_fast(tmp_path, monkeypatch):
    """Under DDP on CPUs each rank resolves `auto`; one all-reduce makes them agree (fp32 unless all say bf16)."""
    from types import SimpleNamespace

    from duogen.train.engine import TrainConfig, _resolve_precision

    _slow_machine(monkeypatch, tmp_path, native=True, ratio=0.5)  # this rank measures bf16 fast
    for others_fast, expected in [(True, "bf16"), (False, "fp32")]:
        backend = SimpleNamespace(device="cpu", world_size=2, rank=1, cfg=None,
                                  all_reduce_sum=lambda t, fast=others_fast: t + float(fast))
        cfg, choice = _resolve_precision(TrainConfig(), backend)
        assert cfg.precision == choice.precision == backend.cfg.precision == expected
        assert ("another rank measured bf16 slow" in choice.reason) == (expected == "fp32")


@pytest.mark.parametrize("isa, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_AMX", True), ("", True)])
def test_a_lowered_onednn_isa_hides_the_cpus_bf16_flags(monkeypatch, isa, native):
    """An AVX2-capped oneDNN (how a slow machine is emulated) runs bf16 without the CPU's bf16 instructions:
    the machine line and the policy must not call it native."""
    monkeypatch.setattr(P, "_cpu_model_and_flags", lambda: ("Some Xeon", {"avx2", "amx_bf16", "avx512_bf16"}))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    got = P.cpu_bf16_support()
    assert got.native is native
    assert ("unused" in got.detail) is (not native)
