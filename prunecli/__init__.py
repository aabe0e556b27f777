"""prunecli: make saved neural networks smaller and faster, with verified surgery and measured reports."""

__version__ = "0.1.0"
