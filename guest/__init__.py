"""docteur's guest core: standard library only.

The image layout, the PACK/IDX reader, Git objects, the protocol codec and
the file server. The host side (docteur.builder, docteur.vm) imports this
package; it never imports them.
"""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (dynamic version)
