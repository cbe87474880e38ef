"""``python -m dspex``: the same as the ``dspex`` command."""

from __future__ import annotations

from dspex.cli import main

if __name__ == "__main__":
    main()
