"""Errors raised by `triposr`. One base class so callers can catch "anything the model package refused"."""

from __future__ import annotations


class TripoSRError(Exception):
    """Base class of every error `triposr` raises on purpose."""


class ConfigError(TripoSRError, ValueError):
    """A model `config.yaml` (or the ViT `config.json` it points to) asks for something this package cannot
    build."""


class ModelNotFoundError(TripoSRError, FileNotFoundError):
    """The weights or config of a model could not be found, read or matched to the network.

    The message names the path (or Hugging Face repo id) and says how to get the weights; `path` holds it too.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])
