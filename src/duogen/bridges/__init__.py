"""One API over both paradigms: generate, edit, personalize, control."""
