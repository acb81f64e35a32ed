"""Plugin registries: built-ins as lazy ``"module:attr"`` strings, third parties via entry points.

``get(name)`` returns the class or raises ``ConfigError`` with a did-you-mean hint; it never
returns None. Nothing is imported until a name is asked for, so ``qbench --help`` stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from qbench.config.errors import ConfigError


def plugin_signature(obj: Any, key_params: tuple[str, ...] = ()) -> str:
    """``name[param=value,...]`` with the parameters that differ from their defaults (or are key)."""
    fields = type(obj).model_fields
    shown = {k: getattr(obj, k) for k in fields if k in key_params or getattr(obj, k) != fields[k].default}
    p = ",".join(f"{k}={v}" for k, v in sorted(shown.items()))
    return f"{obj.name}[{p}]" if p else obj.name


class Registry:
    def __init__(self, kind: str, group: str, builtins: dict[str, str]):
        self.kind = kind            # "calibrator", used in messages
        self.group = group          # entry-point group, e.g. "qbench.calibrators"
        self._specs: dict[str, str] = dict(builtins)
        self._loaded: dict[str, Any] = {}
        self._scanned = False

    def _scan_entry_points(self) -> None:
        # Entry points are read once, lazily: scanning installed distributions costs ~50 ms.
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=self.group):
            self._specs.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._scan_entry_points()
        return sorted(self._specs)

    def get(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        self._scan_entry_points()
        spec = self._specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" Did you mean: {close[0]}?" if close else f" Known: {', '.join(self.names())}."
            raise ConfigError(f"Unknown {self.kind} '{name}'.{hint}")
        module, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        self._loaded[name] = obj
        return obj


calibrators = Registry(
    "calibrator",
    "qbench.calibrators",
    {
        "minmax": "calibrators.minmax:MinMax",
        "percentile": "calibrators.percentile:Percentile",
        "entropy": "calibrators.entropy:Entropy",
        "mse": "calibrators.mse:Mse",
        "table": "calibrators.table:FromTable",
    },
)

samplers = Registry(
    "sampler",
    "qbench.samplers",
    {
        "random": "calibrators.samplers:RandomSampler",
        "lang_balanced": "calibrators.samplers:LangBalancedSampler",
        "proportional": "calibrators.samplers:ProportionalSampler",
        "single_language": "calibrators.samplers:SingleLanguageSampler",
        "length_stratified": "calibrators.samplers:LengthStratifiedSampler",
    },
)

backends = Registry("backend", "qbench.backends", {"ort": "qbench.backends.ort:OrtBackend"})

weight_rules = Registry(
    "weight rule",
    "qbench.weight_rules",
    {"per_channel": "calibrators.weights:PerChannel", "per_tensor": "calibrators.weights:PerTensor"},
)

# A task: what the model does and how its variants are built, evaluated and reported (qbench.tasks.base).
tasks = Registry(
    "task",
    "qbench.tasks",
    {"retrieval": "qbench.tasks.retrieval:RetrievalTask", "translation": "qbench.tasks.translation:TranslationTask",
     "causal_lm": "qbench.tasks.causal_lm:CausalLMTask"},
)
