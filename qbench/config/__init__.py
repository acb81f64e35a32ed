"""Configuration: the sweep schema, errors, the plugin registries, the generated config reference."""
