"""The reference checkpoints that ship in the package: size, loading, and that they generate what they are asked.

docs/references/README.md has the command that trained them, their logs and the full evaluation.
"""

import numpy as np
import pytest

from duogen.demo import REFERENCE_DIR, reference_models


def test_reference_checkpoints_are_small_and_complete():
    files = [f for f in REFERENCE_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20  # the limit: 30 MB in all
    assert set(reference_models()) == {"ar", "dit"}
    assert (REFERENCE_DIR / "codec" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from duogen.data import make_dataset
    from duogen.eval.compare import dataset_prompts

    data = tmp_path_factory.mktemp("world") / "data"
    make_dataset("shapes", data, n=240, preset="tiny", seed=1)
    return [p for p in dataset_prompts(data, per_split=6) if len(p.attributes) == 1]


@pytest.mark.parametrize("name,kwargs", [("dit", {"sampler": "dpm_solver", "steps": 20}), ("ar", {})])
def test_reference_models_generate_what_the_prompt_says(name, kwargs, prompts):
    """Trained, not random: an untrained model scores about 0 here (no object of the asked color)."""
    from duogen.bridges.generate import load_generator
    from duogen.eval.probes import prompt_accuracy

    gen = load_generator(reference_models()[name])
    res = gen.generate([p.caption for p in prompts], n=1, seed=0, guidance=3.0, **kwargs)
    assert res.videos.shape == (len(prompts), 9, 32, 32, 3) and res.videos.dtype == np.uint8
    acc = [prompt_accuracy(v, p.attributes) for v, p in zip(res.videos, prompts)]
    mean = {k: float(np.mean([a[k] for a in acc])) for k in ("color", "direction", "shape")}
    # measured over 96 clips (docs/references, the set shipped since session 34): color 0.92-1.0, direction
    # 0.70-0.81, shape 0.41-0.86 (validation / held-out, AR and DiT)
    assert mean["color"] >= 0.7, mean
    assert (mean["direction"] + mean["shape"]) / 2 >= 0.3, mean
