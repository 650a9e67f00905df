"""fercurate: curate facial-expression-recognition datasets and measure what the cleaning bought."""

__version__ = "0.1.0"
