"""Dataset adapters: each reads one dataset's published format into items."""

from .base import (  # noqa: F401
    ANSWER_TYPES,
    TASK_TYPES,
    Adapter,
    AdapterError,
    RawItem,
    Region,
    Reject,
    Score,
    adapter_class,
    adapter_names,
    get_adapter,
)
