"""inspect-edge: streaming edge inspection of steel strip surface defects.

This package is the torch-free edge runtime: data formats, inference backends,
the streaming pipeline and the service. Training lives in `train`, model export
in `export`; both may import this package, never the other way round.
"""

__version__ = "0.1.0"
