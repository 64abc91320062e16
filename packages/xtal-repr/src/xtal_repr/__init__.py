"""xtal-repr: crystal representations for generative models.

numpy core (torch tensors accepted where it makes sense, torch never required):

* lattice <-> k by polar decomposition: :func:`lattice_to_k`, :func:`k_to_lattice`,
  :func:`k_to_lattice_params`;
* fractional coordinates on the flat torus: :func:`wrap`, :func:`min_image`,
  :func:`torus_velocity`, :func:`torus_interpolate`;
* the 13x15 periodic-table atom encoding: :func:`encode_species`, :func:`decode_species`;
* an immutable :class:`Crystal` with pymatgen / ASE / CIF / POSCAR / extxyz conversions;
* dataset readers with parallel parsing and an on-disk cache: :func:`load_dataset`;
* file helpers shared by the other packages: atomic writes, CSV(.gz) text (:mod:`xtal_repr.fileio`).
"""

from xtal_repr.crystal import Crystal, CrystalFormatError, standardize_structure
from xtal_repr.datasets import (
    CrystalDataset,
    DatasetError,
    SkippedRow,
    load_dataset,
    read_csv_dataset,
    read_structure_folder,
)
from xtal_repr.fileio import (
    CsvReadError,
    MissingDependencyError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    open_text,
    read_csv_rows,
)
from xtal_repr.lattice import (
    K_BASIS,
    k_to_lattice,
    k_to_lattice_params,
    k_to_metric,
    k_to_symmetric,
    lattice_handedness,
    lattice_params_from_matrix,
    lattice_to_k,
    symmetric_to_k,
)
from xtal_repr.species import (
    SPECIES_DIM,
    UnknownElementError,
    cell_to_z,
    decode_species,
    element_symbol,
    encode_species,
    to_atomic_number,
    valid_cell_mask,
    z_to_cell,
)
from xtal_repr.torus import min_image, torus_distance, torus_interpolate, torus_velocity, wrap

__version__ = "0.1.0"

__all__ = [
    "K_BASIS",
    "SPECIES_DIM",
    "Crystal",
    "CrystalDataset",
    "CrystalFormatError",
    "CsvReadError",
    "MissingDependencyError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "open_text",
    "read_csv_rows",
    "DatasetError",
    "SkippedRow",
    "UnknownElementError",
    "cell_to_z",
    "decode_species",
    "element_symbol",
    "encode_species",
    "k_to_lattice",
    "k_to_lattice_params",
    "k_to_metric",
    "k_to_symmetric",
    "lattice_handedness",
    "lattice_params_from_matrix",
    "lattice_to_k",
    "load_dataset",
    "min_image",
    "read_csv_dataset",
    "read_structure_folder",
    "standardize_structure",
    "symmetric_to_k",
    "to_atomic_number",
    "torus_distance",
    "torus_interpolate",
    "torus_velocity",
    "valid_cell_mask",
    "wrap",
    "z_to_cell",
]
