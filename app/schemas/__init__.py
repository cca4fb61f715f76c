"""Marshmallow schemas, used only at the edges."""
