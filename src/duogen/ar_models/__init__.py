"""The multimodal next-token model over the unified vocabulary: layouts and sampling."""
