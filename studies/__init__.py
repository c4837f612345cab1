"""Studies made with gawm: each folder holds one study's params, scripts and committed results (see its README)."""
