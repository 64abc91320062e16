"""Named run presets (TOML files read by :func:`crystalflow.config.load_config`)."""
