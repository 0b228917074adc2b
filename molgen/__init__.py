"""molgen: conditional molecule generation on one E(3)-equivariant backbone."""

__version__ = "0.1.0"
