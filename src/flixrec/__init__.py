"""flixrec: neural collaborative filtering on Netflix-Prize-format and MovieLens ratings."""

__version__ = "0.1.0"

import os as _os

# PyTorch's OpenMP threads otherwise spin while waiting; on a small shared machine (or beside
# another busy process) that made CPU training 30x slower in our measurements. Must be set
# before torch is first imported; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
