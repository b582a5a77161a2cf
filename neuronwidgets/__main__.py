"""`python -m neuronwidgets ...` (also what torchrun -m runs)."""

from neuronwidgets.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
