"""`python -m kernelserver.cli`: the same command line as the kernelserver script."""

from . import main

if __name__ == "__main__":
    main()
