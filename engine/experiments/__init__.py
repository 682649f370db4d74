"""One module per paper experiment; each exposes a frozen Spec, PRESETS and ``run(spec, out)``."""
