"""Data: the data sets, their class subsets, and the glyph builder.

Modules: `datasets` (Fashion-MNIST IDX files, dataset folders, splits, augmentation), `imagefolder`
(train/val/test folders of images), `glyphs` (characters rendered from font files), `subtasks` (class sets:
canonical form, held-out combinations, sampling).

Imports: the package root and `language`. `from hypersan.data import load_dataset` reads the names of
`datasets`.
"""
from ..lazy import forward_names

__getattr__ = forward_names(__name__, "datasets", ("datasets", "imagefolder", "glyphs", "subtasks"))
