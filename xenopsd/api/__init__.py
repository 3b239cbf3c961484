"""The xenopsd interface: every type, error and method, declared once.

This package imports nothing else of ours. `methods.METHODS` is the table
the codecs, the dispatcher, the client library and the CLI are driven from.
"""

from xenopsd.api.methods import METHODS, Method, Param

__all__ = ["METHODS", "Method", "Param"]
