"""Let the CUDA build of torchvision import against torch's CPU build, in vLLM's CPU environment only.

Installed by scripts/setup_env.sh --engine vllm into .venv-vllm's site-packages, with a .pth line that
imports it at interpreter start (every process vLLM starts: the engine core, its model inspection). The
package index serves torchvision as a CUDA build; on torch's CPU build its compiled operators cannot load,
and ``import torchvision`` then fails registering fake kernels for two of them (``operator torchvision::nms
does not exist``), while the VLM processors need only its Python image transforms. On the first import of
torchvision this declares the schemas of those two operators (no kernels: nothing calls them) where its
compiled operators do not load; where they load, it does nothing. It imports nothing until torchvision is
imported.
"""

import importlib.abc
import importlib.util
import os
import sys


class _DeclareTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torchvision")
        folder = os.path.dirname(spec.origin) if spec and spec.origin else None
        compiled = [f for f in os.listdir(folder) if f.startswith("_C.") and f.endswith(".so")] if folder else []
        import torch

        try:
            if not compiled:
                return None
            torch.ops.load_library(os.path.join(folder, compiled[0]))  # torchvision loads the same file after
        except OSError:
            global _LIBRARY
            _LIBRARY = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                _LIBRARY.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


_LIBRARY = None
if not any(isinstance(f, _DeclareTorchvisionOps) for f in sys.meta_path):
    sys.meta_path.insert(0, _DeclareTorchvisionOps())
