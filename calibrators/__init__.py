"""Built-in calibrators and calibration-set samplers, reached through ``qbench.config.registry``."""
