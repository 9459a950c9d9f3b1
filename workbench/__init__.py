"""Workbench: the whole life of a language model on your own machine, offline."""

__version__ = "0.1.0"
