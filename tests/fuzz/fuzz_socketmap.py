"""atheris target `socketmap` of tests/fuzz/targets.py; see tests/fuzz/README.md."""

from runner import main

if __name__ == "__main__":
    main("socketmap")
