"""Bootstrapped meta self-supervised learning (BMSSL) and the shared substrate of the harness."""

from bmssl.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
