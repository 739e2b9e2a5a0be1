"""The embedded stack, the demo sources and the demo reference bases. No production module imports this package."""
