"""CrystalFlow: flow-matching crystal structure prediction (CSP) and de novo generation (DNG).

Public API (imported lazily, so ``import crystalflow`` stays fast)::

    import crystalflow
    structures = crystalflow.sample("SiO2", n=10, num_atoms=9, seed=0)   # pymatgen Structures
    crystalflow.sample(from_csv="test.csv.gz", n=20, out="csp_out/")     # one target per row
    crystalflow.generate(n=100, conditions={"formation_energy_per_atom": -1.0})  # DNG checkpoint
    model = crystalflow.load_model("run_dir/")                            # a CrystalFlow module
    crystalflow.import_official("CSP-mp20/", "csp-mp20.safetensors")      # an official release

See :mod:`crystalflow.sampling` for the pipeline and :mod:`crystalflow.postprocess` for the
post-processing steps.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "sample": "crystalflow.sampling",
    "generate": "crystalflow.sampling",
    "load_model": "crystalflow.checkpoint",
    "import_official": "crystalflow.checkpoint",
    "parse_formula": "crystalflow.formula",
    "cell_composition": "crystalflow.formula",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crystalflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
