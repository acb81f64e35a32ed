"""A sweep's data: the evaluation set and the calibration sets, sampled from a manifest's splits by the configured
samplers, with what the manifest records of them (hashes, sample ids)."""

from __future__ import annotations

from pathlib import Path

from qbench.config.errors import ConfigError, DataError
from qbench.config.schema import SweepConfig, build_plugin


def registry_needs_reference(cfg: SweepConfig) -> bool:
    from qbench.config import registry

    return getattr(registry.tasks.get(cfg.task), "needs_reference", True)


def load_data(cfg: SweepConfig) -> dict:
    """The evaluation set and the calibration sets (samples), and the manifest's ``data`` entry (hashes, sample
    ids): {"evalset", "calib_sets", "entry"}."""
    from qbench.config import registry
    from qbench.config.registry import plugin_signature
    from qbench.data.manifest import data_hashes, load_manifest, load_split

    man = load_manifest(cfg.manifest_path())
    ev = load_split(man, cfg.data.evaluation.split)
    evalset = ev[: cfg.data.evaluation.n] if cfg.data.evaluation.n else ev
    if cfg.data.evaluation.n_per_language:
        kept, seen = [], {}
        for s in evalset:
            seen[s.language] = seen.get(s.language, 0) + 1
            if seen[s.language] <= cfg.data.evaluation.n_per_language:
                kept.append(s)
        evalset = kept
    if registry_needs_reference(cfg) and any(s.reference is None for s in evalset):
        raise ConfigError(f"{man.path}: fields.reference: the {cfg.task} task needs a reference field")
    sets_info, calib_sets = {}, {}
    pools: dict[tuple[str, str], list] = {}
    manifests = {man.path: man}
    for name, c in cfg.data.sets().items():
        key = f"data.calibration_sets.{name}" if cfg.data.calibration_sets else "data.calibration"
        cman = man
        if c.manifest is not None:  # its existence is checked with the config
            path = str(cfg.manifest_path(c.manifest))
            cman = manifests[path] = manifests.get(path) or load_manifest(Path(path))
        if (cman.path, c.split) not in pools:
            pools[(cman.path, c.split)] = load_split(cman, c.split)
        pool = pools[(cman.path, c.split)]
        sampler = build_plugin(registry.samplers, c.sampler)
        try:
            picked = sampler.select(pool, c.n, c.seed)
        except DataError as e:  # name the config key and the pool, not only the sampler
            raise DataError(f"{key}.sampler: {e} (pool: split '{c.split}' of {cman.path})") from None
        chosen = [pool[i] for i in picked]
        overlap = {s.id for s in chosen} & {s.id for s in evalset}
        if overlap:
            raise DataError(f"{man.path}: calibration set '{name}' and the evaluation set share {len(overlap)} "
                            f"sample id(s), e.g. {sorted(overlap)[0]}")
        calib_sets[name] = chosen
        sets_info[name] = {**({"manifest": cman.path, "sha256": data_hashes(cman)} if cman is not man else {}),
                           "split": c.split, "sampler": plugin_signature(sampler), "n": len(chosen), "seed": c.seed,
                           "sample_ids": [s.id for s in chosen]}
    entry = {"manifest": str(cfg.manifest_path()), "name": man.name, "sha256": data_hashes(man),
             "calibration": next(iter(sets_info.values())), "calibration_sets": sets_info,
             "evaluation": {"split": cfg.data.evaluation.split, "n": len(evalset)},
             **({"language_groups": man.language_groups} if man.language_groups else {})}
    return {"evalset": evalset, "calib_sets": calib_sets, "entry": entry}
