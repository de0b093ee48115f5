"""Where an AR model's next-token loss is: per latent frame, on object tokens and on background tokens.

    .venv/bin/python bench/bench_ar_token_loss.py --model RUN/ar/final --data RUN/data [--n 64] [--json]

For the first `--n` clips of a split, each with its own caption (the t2v layout, as training sees it without
condition dropout), the output tokens' cross-entropy (nats per token) by latent frame, over all tokens, over
object tokens and over background tokens. A token is background where its id is the one the model's codec gives an
empty (black) clip at that position: the codec's background ids depend on the position (the frame's border) and
on the neighbours, so "the most common id" would not do. Forward passes only; a few seconds for 64 clips.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def token_loss(model, codec, videos: np.ndarray, captions: list[str], batch: int = 16) -> dict[str, list[float]]:
    """Mean NLL per latent frame over all, object and background tokens, and the object tokens' share."""
    f, h, w = model.spec.latent
    with torch.inference_mode():
        ids = torch.cat([codec.encode(videos[i: i + batch]) for i in range(0, len(videos), batch)]).cpu()
        empty = codec.encode(np.zeros((1, *videos.shape[1:]), np.uint8))[0].cpu()
    ids, empty = ids.reshape(len(videos), f, h * w), empty.reshape(f, h * w)
    nll = []
    for i in range(0, len(videos), batch):
        exs = [model.layouts.example("t2v", model.encode_prompt(c), v.reshape(f, h, w))
               for c, v in zip(captions[i: i + batch], ids[i: i + batch])]
        b = model.layouts.batch(exs)
        with torch.no_grad():
            out = model.score(b)
        per = -out.logp_tokens[b["loss_mask"]].reshape(len(exs), -1)  # (B, output tokens)
        nll.append(per[:, : f * h * w].reshape(len(exs), f, h * w))
    nll_t = torch.cat(nll).numpy()
    obj = (ids != empty).numpy()

    def mean(mask: np.ndarray) -> list[float]:
        return [round(float(nll_t[:, k][mask[:, k]].mean()), 3) if mask[:, k].any() else float("nan") for k in range(f)]

    return {"all": mean(np.ones_like(obj)), "object": mean(obj), "background": mean(~obj),
            "object_share": [round(float(obj[:, k].mean()), 3) for k in range(f)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an AR model directory (RUN/final)")
    ap.add_argument("--data", required=True, help="a shapes-world data set (duogen data make shapes)")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--n", type=int, default=64, help="clips (the split's first n)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from duogen.bridges.generate import ARGenerator
    from duogen.data import load_dataset

    gen = ARGenerator.from_pretrained(a.model)
    gen.model.eval()
    rows = load_dataset(a.data)[a.split].select(range(a.n))
    videos = np.stack([np.asarray(v, np.uint8) for v in rows["video"]])
    res = {"model": a.model, "data": a.data, "split": a.split, "clips": a.n,
           **token_loss(gen.model, gen.codec, videos, list(rows["caption"]))}
    if a.json:
        print(json.dumps(res))
        return
    print(f"{a.model}: {a.n} {a.split} clips, nats per token by latent frame")
    for k in ("all", "object", "background", "object_share"):
        print(f"  {k:13s} " + " ".join(f"{v:6.3f}" for v in res[k]))


if __name__ == "__main__":
    main()
