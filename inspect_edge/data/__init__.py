"""Steel data formats shared by every stage: Severstal CSV/RLE, mask folders, synthetic strips.

numpy + cv2 only (the edge runtime imports this package). See `open_dataset`.
"""

from inspect_edge.data.dataset import (
    DataError,
    Problem,
    Sample,
    SteelDataset,
    open_dataset,
    open_datasets,
    read_image_size,
)
from inspect_edge.data.cvat_mask import read_cvat_mask, write_cvat_mask
from inspect_edge.data.mask_folder import read_mask_folder, write_mask_folder
from inspect_edge.data.rle import RLEError, parse_rle, rle_area, rle_decode, rle_encode
from inspect_edge.data.severstal import SeverstalWriter, read_severstal, write_severstal

__all__ = [
    "DataError",
    "Problem",
    "RLEError",
    "Sample",
    "SeverstalWriter",
    "SteelDataset",
    "open_dataset",
    "open_datasets",
    "parse_rle",
    "read_image_size",
    "read_mask_folder",
    "read_severstal",
    "rle_area",
    "rle_decode",
    "rle_encode",
    "write_mask_folder",
    "read_cvat_mask",
    "write_cvat_mask",
    "write_severstal",
]
