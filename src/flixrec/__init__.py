"""flixrec: neural collaborative filtering on Netflix-Prize-format and MovieLens ratings."""

__version__ = "0.1.0"
