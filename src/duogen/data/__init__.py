"""Data sets on disk as HF `datasets`: the synthetic shapes world, bundled real sets, user folders."""
