"""xtal_repr must not import torch (or the other workspace packages) on its own."""

import subprocess
import sys


def test_import_does_not_pull_torch_or_siblings():
    code = (
        "import sys, numpy as np, xtal_repr as xr;"
        "xr.lattice_to_k(np.eye(3)); xr.encode_species(np.array([1]));"
        "bad = [m for m in ('torch', 'flowcore', 'xtal_eval', 'crystalflow') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
