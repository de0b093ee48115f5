"""Fixtures shared by the editing tests: one tiny generator per paradigm (AR on an untrained codec, the live DiT)."""

import pytest

from duogen.bridges.diffusion import DiffusionGenerator
from duogen.bridges.generate import ARGenerator
from test_ar_model import ar_dir, text  # noqa: F401 (fixtures: a tiny t2v AR model dir on an untrained codec)
from test_latent_diffusion import model  # noqa: F401 (fixture: the tiny live DiT with its codec)

A, B = "a red circle", "a blue circle"


@pytest.fixture(scope="module", params=["ar", "diffusion"])
def gen(request, ar_dir, model):  # noqa: F811
    if request.param == "ar":
        return ARGenerator.from_pretrained(ar_dir)
    return DiffusionGenerator(model)


def kw(gen):
    """Sampling settings that make the tiny models' choices matter: top-k (AR), guidance (diffusion)."""
    return {"top_k": 8} if gen.kind == "ar" else {"guidance": 2.0}
