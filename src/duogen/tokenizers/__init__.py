"""Text tokenizer, image / video / audio codecs and the unified vocabulary."""
