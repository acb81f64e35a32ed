"""The task a run was made with, for the report: its rows and sections (qbench.tasks.base)."""

from __future__ import annotations

from qbench.report.tables import task_of


def task_for(manifest: dict):
    """The run's Task. A run of a task whose plugin is not installed here renders with the contract's defaults."""
    from qbench.config import registry
    from qbench.config.errors import ConfigError
    from qbench.tasks.base import Task

    try:
        return registry.tasks.get(task_of(manifest))()
    except ConfigError:
        return Task()
