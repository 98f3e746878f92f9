"""The dataset adapter interface: what every dataset reader gives the items stage.

An adapter turns one configured dataset into ``RawItem`` records (or
``Reject`` records for what it could not read) and says cheaply how many
records there are at most (so the workflow can plan trace shards before
running). It reads; it does not score: a model's response to the dataset's
items is scored by ``peekaboo.scoring.<adapter name>``, which the traces stage
imports and the items stage does not, so a scoring fix never re-runs the items.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

from ..records import ImageSource, RawItem, Region, Reject
from ..scores import ANSWER_TYPES, TASK_TYPES, Score

__all__ = [
    "ANSWER_TYPES", "TASK_TYPES", "Adapter", "AdapterError", "ImageSource", "RawItem", "Region", "Reject", "Score",
    "adapter_class", "adapter_names", "get_adapter",
]


class AdapterError(ValueError):
    """A dataset's configuration is unusable; the message names the config key."""


class Adapter(ABC):
    name: ClassVar[str]
    default_task_type: ClassVar[str] = "visual_reference"

    def __init__(self, options: Mapping[str, Any], dataset: str, seed: int = 0, base_dir: str | Path = "."):
        self.options = dict(options or {})
        self.dataset = dataset
        self.seed = int(seed)
        self.base_dir = Path(base_dir)

    def path(self, key: str = "path") -> Path:
        """An option holding a path, resolved against the directory the config was read from."""
        value = self.options.get(key)
        if value is None:
            raise AdapterError(f"datasets.{self.dataset}.options.{key}: required by adapter '{self.name}'")
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def check(self) -> list[str]:
        """Problems with the configuration (missing files), each naming its config key. Cheap."""
        return []

    def check_paths(self, *, images: bool = True) -> list[str]:
        """The common checks of file-based adapters: ``path`` exists, and ``images`` (when set) is a folder."""
        try:
            p = self.path()
        except AdapterError as exc:
            return [str(exc)]
        problems = []
        if not p.exists():
            problems.append(f"datasets.{self.dataset}.options.path: no such file or folder {p}")
        if images and self.options.get("images") and not self.path("images").is_dir():
            problems.append(f"datasets.{self.dataset}.options.images: no such folder {self.path('images')}")
        return problems

    @abstractmethod
    def count(self) -> int:
        """An upper bound on the number of records, cheap to compute; used to plan shards."""

    @abstractmethod
    def records(self) -> Iterator[RawItem | Reject]:
        """Every record of the dataset in a stable order."""


# name -> "module:Class", imported on first use so that each adapter lives in its own module (the scorers,
# peekaboo.scoring, have the same names)
_ADAPTERS: dict[str, str] = {
    "panels": "peekaboo.datasets.panels:PanelsAdapter",
    "jsonl": "peekaboo.datasets.jsonl:JsonlAdapter",
    "mathvista": "peekaboo.datasets.mathvista:MathVistaAdapter",
    "hallusionbench": "peekaboo.datasets.hallusionbench:HallusionBenchAdapter",
    "mmmu_pro": "peekaboo.datasets.mmmu_pro:MMMUProAdapter",
    "visargs": "peekaboo.datasets.visargs:VisArgsAdapter",
}


def adapter_names() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_class(name: str) -> type[Adapter]:
    try:
        target = _ADAPTERS[name]
    except KeyError:
        raise AdapterError(f"unknown adapter '{name}' (known: {', '.join(adapter_names())})") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def get_adapter(dataset: str, spec: Mapping[str, Any], seed: int = 0, base_dir: str | Path = ".") -> Adapter:
    """The adapter for a dataset entry of the config (``{adapter, options, ...}``)."""
    cls = adapter_class(spec["adapter"])
    return cls(spec.get("options") or {}, dataset=dataset, seed=seed, base_dir=base_dir)
