# Hydra configs for the `vla` verbs; installed as the package `vla.configs` so a wheel carries them.
